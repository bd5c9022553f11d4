"""Unit tests of nbhelpers.techniques.quantization (from-scratch affine quantization, torch int8,
ONNX Runtime) and of notebook 06's lesson code (nbhelpers.lessons.quantization: targets, facts)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from nbhelpers import measure
from nbhelpers.core.models import MLP, LeNet5
from nbhelpers.core.params import ParameterError
from nbhelpers.lessons import quantization as lesson
from nbhelpers.techniques import quantization as Q

BITS = [2, 3, 4, 5, 6, 7, 8, 12, 16]
MODES = [(sym, pc) for sym in (False, True) for pc in (False, True)]


def weights(seed: int = 0, shape=(32, 50)) -> torch.Tensor:
    """Gaussian weights whose output rows have very different scales (as in trained layers)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.exp(torch.randn(shape[0], *([1] * (len(shape) - 1)), generator=g))
    return torch.randn(*shape, generator=g) * scales + 0.1 * torch.randn(
        shape[0], *([1] * (len(shape) - 1)), generator=g
    )


def test_qrange():
    assert Q.qrange(8, symmetric=False) == (0, 255)
    assert Q.qrange(8, symmetric=True) == (-127, 127)
    assert Q.qrange(2, symmetric=True) == (-1, 1)
    assert Q.qrange(4, symmetric=False) == (0, 15)


@pytest.mark.parametrize("bits", [1, 17, 0, 2.5, True, "8"])
def test_bad_bits_raise(bits):
    with pytest.raises(ParameterError, match="bits"):
        Q.qrange(bits, False)
    with pytest.raises(ParameterError, match="BITS"):
        Q.check_bits("BITS", bits)


def test_hand_computed_asymmetric():
    x = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    s, z = Q.quant_params(x, bits=2, symmetric=False)  # range [-1, 2] over 3 steps: s = 1, z = 1
    assert float(s) == pytest.approx(1.0) and int(z) == 1
    q = Q.quantize(x, s, z, bits=2)
    assert q.tolist() == [0, 1, 1, 3]  # round(0.5) = 0 (half to even) -> 0 + 1
    assert Q.dequantize(q, s, z).tolist() == [-1.0, 0.0, 0.0, 2.0]


def test_hand_computed_symmetric():
    x = torch.tensor([-0.5, 0.1, 1.4])
    s, z = Q.quant_params(x, bits=3, symmetric=True)  # q in [-3, 3], s = 1.4 / 3
    assert float(s) == pytest.approx(1.4 / 3) and int(z) == 0
    assert Q.quantize(x, s, z, bits=3, symmetric=True).tolist() == [-1, 0, 3]


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("sym,per_channel", MODES)
def test_error_at_most_half_a_step(bits, sym, per_channel):
    """Every dequantized element is within s/2 of the original (its own channel's s)."""
    for seed in range(3):
        w = weights(seed)
        s, z = Q.quant_params(w, bits, sym, per_channel)
        w_hat = Q.dequantize(Q.quantize(w, s, z, bits, sym), s, z)
        err = (w - w_hat).abs()
        step = s.expand_as(w) if per_channel else s
        rounding = (
            4 * torch.finfo(torch.float32).eps * w.abs()
        )  # float32 arithmetic, visible at 16 bits
        assert bool((err <= step / 2 + rounding).all()), float((err - step / 2).max())


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("sym,per_channel", MODES)
def test_zero_maps_exactly_to_zero_point(bits, sym, per_channel):
    w = weights(1)
    w[:, 3] = 0.0
    s, z = Q.quant_params(w, bits, sym, per_channel)
    q = Q.quantize(w, s, z, bits, sym)
    zp = z.expand_as(w)
    assert torch.equal(q[:, 3], zp[:, 3])
    assert torch.equal(Q.dequantize(q, s, z)[:, 3], torch.zeros(w.shape[0]))
    if sym:
        assert bool((z == 0).all())


def test_positive_only_tensor_keeps_zero_exact():
    x = torch.tensor([0.0, 0.3, 0.7, 1.0])
    s, z = Q.quant_params(x, 8, symmetric=False)
    assert int(z) == 0 and Q.dequantize(Q.quantize(x, s, z), s, z)[0] == 0.0


def test_all_zero_tensor():
    x = torch.zeros(3, 4)
    for sym, pc in MODES:
        assert torch.equal(Q.fake_quantize(x, 4, sym, pc), x)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("sym", [False, True])
def test_per_channel_error_never_above_per_tensor(bits, sym):
    for seed in range(5):
        for shape in [(32, 50), (8, 3, 5, 5)]:
            w = weights(seed, shape)
            per_tensor = Q.mse(w, Q.fake_quantize(w, bits, sym, per_channel=False))
            per_channel = Q.mse(w, Q.fake_quantize(w, bits, sym, per_channel=True))
            assert per_channel <= per_tensor


def test_more_bits_less_error_and_about_6db_per_bit():
    w = weights(2)
    sq = [Q.sqnr_db(w, Q.fake_quantize(w, b, False, True)) for b in (4, 5, 6, 7, 8)]
    assert all(b > a for a, b in zip(sq, sq[1:]))
    assert 5.0 < (sq[-1] - sq[0]) / 4 < 7.0
    assert Q.sqnr_db(w, w) == float("inf")


def test_levels_and_naive_rescale():
    w = weights(3)
    q_levels = Q.fake_quantize(w, 3, False, False).unique().numel()
    assert q_levels <= 2**3
    w_naive, m = Q.naive_rescale(w)
    assert w_naive.dtype == torch.float32 and float(w_naive.abs().max()) == 1.0
    assert w_naive.unique().numel() == w.unique().numel()  # nothing was rounded to a level
    assert torch.allclose(w_naive * m, w)


def test_quantize_weights_copies_and_quantizes():
    torch.manual_seed(0)
    model = MLP(64, (16,))
    before = model[1].weight.detach().clone()
    q = Q.quantize_weights(model, 3, False, True)
    assert torch.equal(model[1].weight, before)  # the original is untouched
    assert q[1].weight.unique().numel() <= 16 * 2**3
    assert torch.equal(q[1].bias, model[1].bias)
    err = Q.weight_error(model, 8, True, False)
    assert err["mse"] > 0 and err["sqnr_db"] > 30


def test_fusion_groups_of_lenet5_and_mlp():
    assert Q.fusion_groups(LeNet5()) == [["0", "1"], ["3", "4"], ["7", "8"], ["9", "10"]]
    assert Q.fusion_groups(MLP(784)) == [["1", "2"], ["3", "4"]]


def test_bad_engine_raises():
    with pytest.raises(ParameterError, match="ENGINE"):
        Q.set_engine("tpu")


def test_int8_artifact_at_most_a_3_5th_of_fp32():
    torch.manual_seed(0)
    model = MLP(784).eval()
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error", DeprecationWarning
        )  # quiet_ao must silence torch.ao's warnings
        q = Q.dynamic_int8(model, "x86")
    assert measure.serialized_bytes(q) <= measure.serialized_bytes(model) / 3.5
    x = torch.rand(16, 1, 28, 28)
    with torch.no_grad():
        assert (q(x) - model(x)).abs().max() < 0.05 * (model(x).max() - model(x).min())


def test_static_ptq_of_lenet5_runs_int8():
    torch.manual_seed(0)
    model = LeNet5().eval()
    x = torch.rand(32, 1, 28, 28)
    loader = [(x[:16], None), (x[16:], None)]
    prepared = Q.prepare_static(model, "x86")
    assert Q.calibrate(prepared, loader, 5) == 32
    q = Q.convert(prepared)
    assert "quantized" in type(q.body[0]).__module__ and q.body[0].weight().is_quantized
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert (out - ref).abs().max() < 0.1 * (ref.max() - ref.min())
    assert measure.serialized_bytes(q) < measure.serialized_bytes(model) / 3


def test_ort_fp32_matches_torch(tmp_path):
    torch.manual_seed(0)
    model = MLP(64, (32,)).eval()
    x = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    fp32 = Q.export_onnx(model, tmp_path / "m.onnx", x)
    with torch.no_grad():
        np.testing.assert_allclose(Q.OrtModel(fp32)(x), model(x).numpy(), rtol=1e-4, atol=1e-5)


def _float_slack(ref: torch.Tensor) -> torch.Tensor:
    """float32 rounding of the rescaling (a few ulps of each logit), far below one int8 step."""
    return 1e-5 * (1 + ref.abs())


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ort_int8_error_within_rounding_bound_with_reduce_range(tmp_path, static, seed):
    """With 7-bit weights no u8s8 pair can saturate (2 * 255 * 64 <= 32767) on any x86 CPU, so every
    logit is within the worst-case rounding bound and the class is kept wherever the fp32 margin
    exceeds twice the bound."""
    torch.manual_seed(seed)
    layer = torch.nn.Linear(64, 10).eval()
    x = torch.rand(400, 64, generator=torch.Generator().manual_seed(10 + seed)) * 2 - 0.5
    with torch.no_grad():
        ref = layer(x)
    fp32 = Q.export_onnx(layer, tmp_path / "l.onnx", x)
    loader = [(x[:200], None), (x[200:], None)] if static else None
    sess = Q.OrtModel(Q.ort_quantize(fp32, tmp_path / "q.onnx", loader, 2, reduce_range=True))
    out = torch.as_tensor(sess(x))
    bound = Q.int8_error_bound(layer, x, reduce_range=True, static=static)
    err = (out - ref).abs()
    assert bool((err <= bound + _float_slack(ref)).all()), float((err / bound).max())
    top2 = ref.topk(2, dim=1).values
    safe = (top2[:, 0] - top2[:, 1]) > 2 * bound.max(1).values
    assert bool((out.argmax(1) == ref.argmax(1))[safe].all())
    assert sess.bytes < fp32.stat().st_size


def test_full_8_bit_weights_within_bound_where_the_cpu_has_vnni(tmp_path):
    """On a VNNI CPU (or off x86) full 8-bit weights cannot saturate either; on x86 without VNNI
    the chosen default must be 7 bits. Either way the default choice keeps the bound."""
    from nbhelpers.core import machine

    advice = machine.int8_precaution(machine.cpu_flags())
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 10).eval()
    x = torch.rand(400, 64, generator=torch.Generator().manual_seed(10)) * 2 - 0.5
    with torch.no_grad():
        ref = layer(x)
    fp32 = Q.export_onnx(layer, tmp_path / "l.onnx", x)
    out = torch.as_tensor(Q.OrtModel(Q.ort_quantize(fp32, tmp_path / "q.onnx"))(x))  # CPU's default
    bound = Q.int8_error_bound(layer, x, reduce_range=advice["reduce_range"])
    assert bool(((out - ref).abs() <= bound + _float_slack(ref)).all())


def test_pair_sum_arithmetic():
    from nbhelpers.core import machine

    assert machine.max_pair_sum(8) == 65280 > machine.INT16_MAX
    assert machine.max_pair_sum(7) == 32640 <= machine.INT16_MAX


def test_int8_error_bound_hand_computed():
    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.27, -0.5]]))
        layer.bias.zero_()
    x = torch.tensor([[2.55, 0.0]])
    # s_w = 1.27 / 127 = 0.01, s_x = 2.55 / 255 = 0.01
    # bound = 0.01 * (1.27 + 0.005) + 0.01 * (0.5 + 0.005) + 2.55 * 0.005 = 0.03055
    assert float(Q.int8_error_bound(layer, x, reduce_range=False)) == pytest.approx(0.03055)
    # static, reduce_range: s_w = 1.27 / 64, s_x = 2.55 / 127, s_y = |y| / 127 with y = 3.2385
    s_w, s_x, s_y = 1.27 / 64, 2.55 / 127, 3.2385 / 127
    want = s_x * (1.77 + s_w) + 2.55 * s_w / 2 + s_y + s_x * s_w / 2
    assert float(Q.int8_error_bound(layer, x, True, static=True)) == pytest.approx(want, rel=1e-6)


def test_mlp_int8_agrees_with_torch_on_this_cpu(tmp_path):
    """The end-to-end path at this CPU's default precaution: dynamic and static int8 of a 2-layer
    MLP keep the class of every input whose fp32 margin exceeds a generous multiple of one
    layer's rounding bound (a saturating kernel breaks this by far)."""
    torch.manual_seed(0)
    model = MLP(64, (32,)).eval()
    x = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
    fp32 = Q.export_onnx(model, tmp_path / "m.onnx", x)
    loader = [(x[:100], None), (x[100:], None)]
    for path in (
        Q.ort_quantize(fp32, tmp_path / "dyn.onnx"),
        Q.ort_quantize(fp32, tmp_path / "static.onnx", loader, 2),
    ):
        agree = Q.output_agreement(ref, Q.OrtModel(path)(x))
        assert agree["top1_agreement"] >= 0.9, agree


def test_ort_quantize_bad_input(tmp_path):
    model = MLP(64, (8,)).eval()
    fp32 = Q.export_onnx(model, tmp_path / "m.onnx", torch.rand(2, 64))
    with pytest.raises(ParameterError, match="CALIBRATION_BATCHES"):
        Q.ort_quantize(fp32, tmp_path / "s.onnx", [(torch.rand(2, 64), None)], 0)
    with pytest.raises(ParameterError, match="ORT_FORMAT"):
        Q.ort_quantize(fp32, tmp_path / "s.onnx", [(torch.rand(2, 64), None)], 1, fmt="int4")
    with pytest.raises(ParameterError, match="REDUCE_RANGE"):
        Q.ort_quantize(fp32, tmp_path / "s.onnx", reduce_range="yes")


def test_same_runtime_speedups():
    import pandas as pd

    t = pd.DataFrame(
        {"accuracy": [0.9, 0.895], "bytes": [400, 100], "latency_ms_b8": [2.0, 0.5]},
        index=pd.Index(["a", "b"], name="model"),
    )
    out = Q.same_runtime_speedups(t, [("a", "b")], [8])
    assert out.loc["b", "speedup_b8"] == 4.0 and out.loc["b", "size_ratio"] == 4.0
    assert out.loc["b", "accuracy_delta_points"] == pytest.approx(-0.5)


def test_saturation_check_never_beyond_bound_with_7_bit_weights(tmp_path):
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 10)
    x = torch.rand(300, 64, generator=torch.Generator().manual_seed(3))
    out = Q.saturation_check(layer, x, tmp_path, reduce_range=True)
    assert out["reduce_range"] is True and out["outputs"] == 300 * 10
    assert out["outputs_beyond_bound"] == 0 and 0 < out["max_error_over_bound"] <= 1


def test_reduce_range_study_rows(tmp_path):
    torch.manual_seed(0)
    model = MLP(64, (16,)).eval()
    x = torch.rand(120, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 10, (120,), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x)
    src = Q.export_onnx(model, tmp_path / "m.onnx", x)
    study = Q.reduce_range_study(
        {"mlp": src}, [(x[:60], y[:60]), (x[60:], y[60:])], 2, x, y, {"mlp": ref}
    )
    assert list(study.index) == [
        ("mlp", k, rr) for k in ("dynamic", "static") for rr in (False, True)
    ]
    assert ((study.top1_agreement > 0) & (study.top1_agreement <= 1)).all()
    want = float((ref.argmax(1) == y).float().mean())  # agreement 1 would give fp32's accuracy
    full = study[study.top1_agreement == 1.0]
    assert (full.accuracy == want).all()


def _sweep(sqnr: dict[tuple[str, int], float]) -> pd.DataFrame:
    """A from-scratch sweep of one model: (variant, bits) -> SQNR, accuracy 0.9 everywhere."""
    return pd.DataFrame(
        [
            {
                "model": "m",
                "variant": v,
                "bits": b,
                "sqnr_db": s,
                "accuracy": 0.9,
                "accuracy_delta_points": 0.0,
                "delta_low_points": -0.1,
                "delta_high_points": 0.1,
            }
            for (v, b), s in sqnr.items()
        ]
    )


def test_sqnr_bits_span():
    assert Q.sqnr_bits_span([8, 7, 6, 5, 4, 3, 2]) == (4, 8)
    assert Q.sqnr_bits_span([8, 4, 2]) == (4, 8)
    assert Q.sqnr_bits_span([8, 2]) == (2, 8)  # one width >= 4: use them all
    assert Q.sqnr_bits_span([4]) == (4, 4)


def test_sqnr_gain_growth_and_per_channel_on_known_values():
    sq = {}
    for v, offset in (
        ("asymmetric per-tensor", 0.0),
        ("symmetric per-tensor", -1.0),
        ("asymmetric per-channel", 2.0),
        ("symmetric per-channel", 1.0),
    ):
        sq.update({(v, 2): 5.0 + offset, (v, 4): 20.0 + offset, (v, 8): 44.0 + offset})
    sweep = _sweep(sq)
    assert Q.sqnr_gain_per_bit(sweep) == pytest.approx(6.0)  # (44 - 20) / (8 - 4)
    assert Q.sqnr_grows_with_bits(sweep) and Q.per_channel_never_worse(sweep)
    worse = _sweep({**sq, ("symmetric per-channel", 8): 42.0})
    assert not Q.per_channel_never_worse(worse) and Q.sqnr_grows_with_bits(worse)
    flat = _sweep({**sq, ("asymmetric per-tensor", 4): 44.0})
    assert not Q.sqnr_grows_with_bits(flat)
    assert np.isnan(Q.sqnr_gain_per_bit(sweep[sweep.bits == 8]))


def test_sqnr_gain_per_bit_of_real_weights_is_about_six_db():
    """Uniform rounding noise: s^2 / 12, a quarter per extra bit, 10 log10 4 = 6.02 dB."""
    w = weights(0, (64, 256))
    rows = [
        {
            "model": "w",
            "variant": v,
            "bits": b,
            "sqnr_db": Q.sqnr_db(w, Q.fake_quantize(w, b, sym, pc)),
        }
        for v, (sym, pc) in Q.VARIANTS.items()
        for b in (4, 8)
    ]
    assert Q.sqnr_gain_per_bit(pd.DataFrame(rows)) == pytest.approx(6.02, abs=0.5)


def _compare_rows() -> pd.DataFrame:
    """A ``measure.compare``-like table of two fp32 models and their int8 versions."""
    return pd.DataFrame(
        {
            "accuracy": [0.95, 0.94, 0.97, 0.975],
            "params": [1000, 1000, np.nan, np.nan],
            "bytes": [4000, 1100, 4000, 1000],
            "accuracy_delta_points": [0.0, -1.0, 0.0, 0.5],
            "delta_low_points": [np.nan, -2.0, np.nan, -0.1],
            "delta_high_points": [np.nan, 0.2, np.nan, 1.1],
            "latency_ms_b1": [1.0, 2.0, 0.5, 0.4],
            "latency_ms_b64": [10.0, 4.0, 8.0, 8.0],
        },
        index=["mlp fp32", "mlp int8 dynamic", "mlp fp32 ort", "mlp int8 ort static"],
    )


def test_int8_targets_and_targets_met():
    table = _compare_rows()
    same = Q.same_runtime_speedups(
        table, [("mlp fp32", "mlp int8 dynamic"), ("mlp fp32 ort", "mlp int8 ort static")], [1, 64]
    )
    four = pd.DataFrame(
        [
            {
                "model": "mlp",
                "variant": "symmetric per-channel",
                "accuracy_delta_points": -3.0,
                "delta_low_points": -4.0,
                "delta_high_points": -2.0,
            }
        ]
    )
    kept, speed = lesson.int8_targets(same, table, four, 64)
    assert [t["name"] for t in kept] == [
        "accuracy drop (mlp int8 dynamic)",
        "size ratio (mlp int8 dynamic)",
        "accuracy drop (mlp int8 ort static)",
        "size ratio (mlp int8 ort static)",
        "4-bit per-channel drop (mlp symmetric per-channel)",
    ]
    assert [t["met"] for t in kept] == [False, False, True, True, False]
    assert kept[0]["measured"] == 1.0 and (kept[0]["low"], kept[0]["high"]) == (-0.2, 2.0)
    assert kept[1]["measured"] == pytest.approx(4000 / 1100) and kept[3]["measured"] == 4.0
    assert [t["name"] for t in speed] == [
        "speedup (mlp int8 dynamic)",
        "speedup (mlp int8 ort static)",
    ]
    assert [t["measured"] for t in speed] == [2.5, 1.0] and [t["met"] for t in speed] == [
        True,
        False,
    ]
    met = lesson.targets_met
    assert met(kept + speed, "accuracy") is False and met(kept, "size") is False
    assert met(speed, "speedup") is False and met(speed[:1], "speedup") is True
    assert met(kept, "speedup") is None and met(kept, "4-bit") is False
    assert set(lesson.TARGET_KINDS) == {t["name"].split()[0] for t in kept + speed}


def _profile(rows: list[tuple]) -> pd.DataFrame:
    """An ``ort_profile``-shaped table from (node, op, input_type, order, ms) rows."""
    df = pd.DataFrame(rows, columns=["node", "op", "input_type", "order", "ms_per_run"])
    df["share"] = df.ms_per_run / df.ms_per_run.sum()
    return df.sort_values("ms_per_run", ascending=False, ignore_index=True)


def test_summary_facts_on_known_tables():
    table = _compare_rows()
    table.loc["lenet5 int8 qat"] = table.loc["mlp int8 dynamic"].to_dict() | {"accuracy": 0.95}
    table.loc["lenet5 int8 static"] = table.loc["mlp int8 dynamic"].to_dict() | {"accuracy": 0.94}
    same = Q.same_runtime_speedups(
        table,
        [
            ("mlp fp32", "mlp int8 dynamic"),
            ("mlp fp32 ort", "mlp int8 ort static"),
            ("mlp fp32", "lenet5 int8 qat"),
        ],
        [1, 64],
    )
    sq = {(v, b): 6.0 * b + (1.0 if "channel" in v else 0.0) for v in Q.VARIANTS for b in (2, 4, 8)}
    sweep = _sweep(sq)
    naive = pd.DataFrame(
        {"distinct values": [900, 899, 256]},
        index=["float32 weights", "naive: x / max|x| (then * max)", "int8 asymmetric per-channel"],
    )
    scan = pd.DataFrame(
        {
            "channels": ["6, 16", "6, 16", "32, 64", "32, 64"],
            "batch_size": [1, 64, 1, 64],
            "fp32_ms": [1.0, 2.0, 4.0, 16.0],
            "int8_ms": [2.0, 8.0, 2.0, 8.0],
        }
    )
    scan["int8_speedup"] = scan.fp32_ms / scan.int8_ms
    prof8 = _profile(
        [
            ("/3/Conv", "QLinearConv", "uint8", 2, 1.0),
            ("/0/Conv_token_1", "QLinearConv", "uint8", 1, 2.0),
        ]
        + [("x_QuantizeLinear", "QuantizeLinear", "float", 0, 0.5)]
        + [
            ("Transpose", "Transpose", "uint8", 3, 0.25),
            ("/2/MaxPool", "MaxPool", "uint8", 4, 0.25),
        ]
    )
    prof32 = _profile(
        [("/1/Relu", "Conv", "float", 0, 0.5), ("x", "ReorderOutput", "float", 1, 0.5)]
    )
    profiles = {"f32": prof32, "q8": prof8}
    cpu = {"cpu": "Test CPU", "vnni": False, "int8_reduce_range": True, "int8_reason": "no VNNI"}
    f = lesson.summary(
        sweep, naive, table, same, scan, profiles, cpu, n_test=1000, fp32_profile="f32"
    )["value"]
    assert (
        f["CPU"] == "Test CPU"
        and f["CPU has VNNI"] is False
        and f["ONNX Runtime reduce_range chosen"] is True
    )
    assert f["SQNR gain per bit"] == 6.0 and f["SQNR grows with every bit"] is True
    assert (
        f["most bits: every variant within noise"] is True
        and f["most bits: largest accuracy change"] == 0.0
    )
    assert f["per-channel SQNR never below per-tensor"] is True
    assert f["naive rescale: distinct values"] == 899 and f["int8: distinct values"] == 256
    assert f["mlp int8 dynamic: times smaller"] == pytest.approx(3.64)
    assert f["mlp int8 dynamic: bytes beyond one per parameter"] == 100
    assert (
        "mlp int8 ort static: bytes beyond one per parameter" not in f.index
    )  # no parameter count
    assert f["mlp int8 dynamic: faster than fp32, smallest batch"] is False
    assert f["mlp int8 dynamic: faster than fp32, largest batch"] is True
    assert f["mlp int8 ort static: faster than fp32, largest batch"] is False  # 1.0x: not faster
    assert f["mlp: ONNX Runtime fp32 speed vs eager torch, smallest batch"] == 2.0
    assert "mlp: ONNX Runtime fp32 speed vs eager torch, largest batch" not in f.index
    assert not [n for n in f.index if n.startswith("lenet5 int8 qat")]  # the static model's kernels
    assert f["mlp: fastest model, smallest batch"] == "mlp int8 ort static"
    assert f["mlp: fastest model, largest batch"] == "mlp int8 dynamic"
    assert (
        f["width scan: int8 speedup, narrowest"] == 0.25
        and f["width scan: int8 speedup, widest"] == 2.0
    )
    assert f["width scan: int8 faster at the widest"] is True
    assert f["width scan: fp32 time growth"] == 8.0 and f["width scan: int8 time growth"] == 1.0
    assert f["CPU has AMX int8"] is False  # no "amx" key: not claimed
    assert f["fp32 profile: time per call"] == 1.0 and f["fp32 profile: layout share"] == 0.5
    assert f["q8 profile: time over fp32"] == 4.0
    assert (
        f["q8 profile: first convolution share"] == 0.5
    )  # /0/ runs first, not the slowest-first row
    assert f["q8 profile: convolution share"] == 0.75
    assert f["q8 profile: most time in convolutions"] is True
    assert f["q8 profile: quantize/dequantize share"] == 0.125
    assert f["q8 profile: layout share"] == 0.062 and f["q8 profile: pooling share"] == 0.062
    assert f["q8 profile: convolutions over fp32's"] == 6.0
    assert f["q8 profile: slowest operator"] == "QLinearConv on uint8"
    assert f["largest int8 accuracy drop"] == 1.0 and f["QAT minus static PTQ"] == 1.0
    assert f["one test image"] == 0.1 and f["standard error of mlp fp32's accuracy"] == 0.69
    skipped = lesson.summary(
        sweep, naive, table, same, scan.iloc[:0], profiles, cpu, n_test=1000, fp32_profile="f32"
    )
    assert skipped.loc["width scan", "value"] == "skipped"


def test_mixed_precision_keeps_the_first_convolution_in_float(tmp_path):
    """keep_float=["0"]: the first Conv stays a float Conv, the second becomes a QLinearConv; the
    outputs stay close to the fully quantized model's and the float model's."""
    import onnx

    torch.manual_seed(0)
    model = LeNet5((1, 8, 8)).eval()
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    fp32 = Q.export_onnx(model, tmp_path / "m.onnx", x)
    assert len(Q.weighted_nodes(fp32)) == 5  # two convolutions, three Linear layers
    loader = [(x[:32], None), (x[32:], None)]

    def ops(path):
        return [n.op_type for n in onnx.load(str(path)).graph.node]

    full = Q.ort_quantize(fp32, tmp_path / "full.onnx", loader, 2, fmt="QOperator")
    mixed = Q.ort_quantize(
        fp32, tmp_path / "mixed.onnx", loader, 2, fmt="QOperator", keep_float=["0"]
    )
    assert ops(full).count("QLinearConv") == 2 and "Conv" not in ops(full)
    assert ops(mixed).count("QLinearConv") == 1 and ops(mixed).count("Conv") == 1
    with torch.no_grad():
        ref = model(x)
    assert Q.output_agreement(ref, Q.OrtModel(mixed)(x))["top1_agreement"] >= 0.9
    assert Q.nodes_of_layers(fp32, ["3", "0"]) == ["/3/Conv", "/0/Conv"]
    with pytest.raises(
        ParameterError, match=r"MIXED_FLOAT.*weighted layers of the model: 0, 11, 3"
    ):
        Q.ort_quantize(fp32, tmp_path / "bad.onnx", loader, 2, keep_float=["1"])
    assert Q.check_layer_names("MIXED_FLOAT", ["0", "9"], model) == ["0", "9"]
    with pytest.raises(ParameterError, match="MIXED_FLOAT"):
        Q.check_layer_names("MIXED_FLOAT", ["conv1"], model)


def test_kmeans_weights_share_two_to_the_bits_values_per_layer():
    torch.manual_seed(0)
    model = MLP(64, (32,)).eval()
    with torch.no_grad():  # trained-like weights: crowded near zero, a few large
        model[1].weight.copy_(torch.randn(32, 64) * 0.05)
    shared, table = Q.kmeans_weights(model, 2)
    for layer in (shared[1], shared[3]):
        assert len(torch.unique(layer.weight)) <= 4
    assert list(table["distinct values"]) == [4, 4] and list(table["weights"]) == [2048, 320]
    assert torch.equal(shared[1].bias, model[1].bias)  # biases stay float
    w = model[1].weight.detach()
    uniform = Q.fake_quantize(w, 2, symmetric=False, per_channel=False)
    assert Q.sqnr_db(w, shared[1].weight.detach()) > Q.sqnr_db(w, uniform) + 3  # bell-shaped
    again, _ = Q.kmeans_weights(model, 2)
    assert torch.equal(again[1].weight, shared[1].weight)
    with pytest.raises(ParameterError, match="bits"):
        Q.kmeans_weights(model, 9)


def test_kmeans_vs_uniform_rows():
    torch.manual_seed(0)
    model = MLP(64, (16,)).eval()
    x, y = torch.rand(40, 1, 8, 8), torch.randint(0, 10, (40,))
    t = Q.kmeans_vs_uniform(model, [(x, y)], [4, 2])
    assert list(t["bits"]) == [4, 2]
    assert {"k-means sqnr_db", "uniform sqnr_db", "k-means accuracy", "uniform accuracy"} <= set(t)
    diff = (t["k-means accuracy"] - t["uniform accuracy"]) * 100
    assert np.allclose(t["k-means minus uniform (points)"], diff)
    assert (t["low"] <= t["k-means minus uniform (points)"]).all()


def test_calibration_methods_give_a_paired_table(tmp_path):
    torch.manual_seed(0)
    model = MLP(64, (16,)).eval()
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1).detach()  # the float model is right on every image
    fp32 = Q.export_onnx(model, tmp_path / "m.onnx", x)
    calib = [(x[:20], None), (x[20:], None)]
    t = Q.calibration_table({"mlp": fp32}, tmp_path, calib, 2, [(x, y)], ["MinMax", "Percentile"])
    assert list(t["calibration"]) == ["MinMax", "Percentile"] and (t["model"] == "mlp").all()
    assert np.allclose(t["delta_points"], (t["accuracy"] - 1.0) * 100)
    with pytest.raises(ParameterError, match="CALIBRATIONS"):
        Q.ort_quantize(fp32, tmp_path / "bad.onnx", calib, 2, calibration="Histogram")


def test_activation_ranges_and_static_activation_quantization():
    m = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), torch.nn.ReLU(),
                            torch.nn.Linear(2, 1, bias=False))  # fmt: skip
    with torch.no_grad():
        m[0].weight.copy_(torch.eye(2))
        m[2].weight.copy_(torch.ones(1, 2))
    a, b = torch.tensor([[0.0, 1.0]]), torch.tensor([[3.0, -1.0]])
    r = Q.activation_ranges(m, [(a, None), (b, None), (torch.full((1, 2), 99.0), None)], 2)
    assert r["0"].tolist() == [-1.0, 3.0] and r["2"].tolist() == [0.0, 3.0]  # 2 batches only
    q = Q.quantize_activations(m, 2, r)
    # layer 0 input: [-1, 3] on 2 bits, step s = 4/3 and zero point z = round(0.75) = 1, so the
    # levels are s (q - z) = -4/3, 0, 4/3, 8/3 (zero exact); 0.4 rounds to 0 and 10, outside the
    # calibrated range, saturates at 8/3. Layer 2 input: [0, 3], step 1: 8/3 rounds to 3.
    x = torch.tensor([[0.4, 10.0]])
    with torch.no_grad():
        assert torch.allclose(q(x), torch.tensor([[3.0]]), atol=1e-6)
        assert torch.allclose(m(x), torch.tensor([[10.4]]))
        assert torch.allclose(q(torch.tensor([[1.2, 1.0]])), torch.tensor([[2.0]]), atol=1e-6)
    assert not m[0]._forward_pre_hooks  # the original model is untouched
    with pytest.raises(ValueError, match="no calibrated range"):
        Q.quantize_activations(m, 4, {"0": r["0"]})


@pytest.mark.parametrize(
    "override, name",
    [
        ({"MIXED_FLOAT": ["1"]}, "MIXED_FLOAT"),  # LeNet-5's weighted layers: 0, 3, 7, 9, 11
        ({"CALIBRATIONS": ["Histogram"]}, "CALIBRATIONS"),
        ({"ACT_BITS": [1]}, "ACT_BITS"),
        ({"KMEANS_BITS": [9]}, "KMEANS_BITS"),
    ],
)
def test_notebook_new_parameters_fail_in_validation(override, name, tmp_path):
    from pathlib import Path

    from notebook_runner import assert_fails_in_validation

    nb = Path(__file__).resolve().parents[1] / "notebooks" / "06_quantization.ipynb"
    assert_fails_in_validation(nb, tmp_path, name, **override)


def test_op_groups_and_profile_by_op_keep_every_operator():
    assert Q.op_group("QLinearConv") == "convolution" and Q.op_group("ReorderOutput") == "layout"
    assert Q.op_group("DynamicQuantizeLinear") == "quantize / dequantize"
    assert Q.op_group("NoSuchOp") == "other"
    a = _profile([("c", "Conv", "float", 0, 3.0), ("p", "MaxPool", "float", 1, 1.0)])
    b = _profile(
        [("c", "QLinearConv", "uint8", 1, 1.0), ("q", "QuantizeLinear", "float", 0, 1.0)]
        + [("p", "MaxPool", "uint8", 2, 1.0), ("z", "NoSuchOp", "uint8", 3, 1.0)]
    )
    t = Q.profile_by_op({"a": a, "b": b})
    assert list(t.columns) == ["a", "b"] and np.allclose(t.sum(), 1.0)
    assert list(t.index.get_level_values("group")) == [
        "convolution",
        "convolution",
        "quantize / dequantize",
        "pooling",
        "pooling",
        "other",
    ]
    assert t.loc[("convolution", "Conv (float)"), "a"] == 0.75
    assert t.loc[("pooling", "MaxPool (uint8)")].tolist() == [0.0, 0.25]


def test_ort_profile_lists_every_operator_in_execution_order(tmp_path):
    torch.manual_seed(0)
    model = LeNet5((1, 8, 8)).eval()
    x = torch.rand(16, 1, 8, 8)
    fp32 = Q.export_onnx(model, tmp_path / "m.onnx", x)
    q = Q.ort_quantize(fp32, tmp_path / "q.onnx", [(x, None)], 1)
    p = Q.ort_profile(q, x, runs=2, prefix=tmp_path / "prof")
    assert sorted(p.order) == list(range(len(p))) and p.share.sum() == pytest.approx(1.0)
    first = p.sort_values("order").iloc[0]
    assert first["op"] == "QuantizeLinear" and first["input_type"] == "float"
    assert (p[p.op == "QLinearConv"].input_type == "uint8").all()
    assert (p.op.map(Q.op_group) != "other").all()  # every operator has a named group


def test_class_batch_and_observer_ranges():
    x = torch.arange(12.0).reshape(12, 1)
    loader = [(x[:6], torch.tensor([0, 1, 0, 1, 0, 1])), (x[6:], torch.tensor([1, 1, 0, 0, 0, 0]))]
    [(xb, yb)] = Q.class_batch(loader, 1, 4)
    assert xb.flatten().tolist() == [1.0, 3.0, 5.0, 6.0] and (yb == 1).all()
    with pytest.raises(ValueError, match="class 7"):
        Q.class_batch(loader, 7, 1)
    model = torch.nn.Sequential(torch.nn.Linear(1, 2), torch.nn.ReLU())
    none = Q.observer_ranges(Q.prepare_static(model))
    assert list(none.layer) == ["quant", "body.0"] and none.observed_min.isna().all()
    assert (none.scale == 1.0).all() and (none.range_high == 127.0).all()  # x86: 7-bit activations
    p = Q.prepare_static(model)
    Q.calibrate(p, [(x, None)], 1)
    seen = Q.observer_ranges(p).set_index("layer")
    assert seen.loc["quant", "observed_min"] == 0.0 and seen.loc["quant", "observed_max"] == 11.0
    assert seen.loc["quant", "range_low"] <= 0.0 < seen.loc["quant", "range_high"] <= 11.0 + 1e-6


def test_calibration_mistakes_pair_every_setting_with_fp32_and_the_right_way():
    torch.manual_seed(0)
    model = MLP(64, (16, 8)).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(256, 1, 8, 8, generator=g), torch.arange(256) % 10
    loader = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 256, 64)]
    acc, ranges = Q.calibration_mistakes(model, loader, loader, 2, 3)
    assert list(acc.setting) == [
        "calibrated: 2 batches",
        "one batch of class 3",
        "one image of class 3",
        "calibrated: 2 batches",
        "no calibration",
        "one batch of class 3",
        "one image of class 3",
    ]
    assert acc.calibration_images.tolist() == [128, 26, 1, 128, 0, 26, 1]
    right = acc[acc.setting.str.startswith("calibrated")]
    assert (right.vs_calibrated_points == 0).all() and (
        right.vs_calibrated_verdict == "within noise"
    ).all()
    assert (
        (acc.vs_fp32_low <= acc.vs_fp32_points) & (acc.vs_fp32_points <= acc.vs_fp32_high)
    ).all()
    assert len(ranges) == 4 * 4 and ranges.setting.nunique() == 4  # input + 3 Linear outputs
    f = lesson._mistake_facts(acc.assign(model="mlp"), ranges.assign(model="mlp"))
    names = {r[0]: r[1] for r in f}
    assert names["mlp torch int8, no calibration: input grid step"] == 1.0
    assert names["mlp torch int8, calibrated: change vs fp32"] == round(
        right.vs_fp32_points.iloc[1], 2
    )
    assert "mlp torch int8, one image of class 3: verdict vs calibrated" in names


def test_kernel_table_leaves_out_the_warm_up_call():
    def ev(node, op, us):
        return {"cat": "Node", "name": f"{node}_kernel_time", "dur": us,
                "args": {"op_name": op, "input_type_shape": [{"float": [1]}]}}

    # one warm-up call (1000 us and 10 us) and two profiled calls (1 and 3 us; 10 and 30 us)
    events = [ev("a", "Conv", 1000), ev("b", "Gemm", 10), {"cat": "Session", "name": "x", "dur": 5},
              ev("a", "Conv", 1), ev("b", "Gemm", 10), ev("a", "Conv", 3), ev("b", "Gemm", 30)]
    t = Q.kernel_table(events, runs=2).set_index("node")
    assert t.loc["a", "ms_per_run"] == pytest.approx(0.002)
    assert t.loc["b", "ms_per_run"] == pytest.approx(0.02)
    assert t.loc["a", "order"] == 0 and t.loc["b", "share"] == pytest.approx(20 / 22)
