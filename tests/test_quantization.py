"""Unit tests of nbhelpers.quantization: from-scratch affine quantization, torch int8, ONNX Runtime."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from nbhelpers import measure
from nbhelpers import quantization as Q
from nbhelpers.models import LeNet5, MLP
from nbhelpers.params import ParameterError

BITS = [2, 3, 4, 5, 6, 7, 8, 12, 16]
MODES = [(sym, pc) for sym in (False, True) for pc in (False, True)]


def weights(seed: int = 0, shape=(32, 50)) -> torch.Tensor:
    """Gaussian weights whose output rows have very different scales (as in trained layers)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.exp(torch.randn(shape[0], *([1] * (len(shape) - 1)), generator=g))
    return torch.randn(*shape, generator=g) * scales + 0.1 * torch.randn(shape[0], *([1] * (len(shape) - 1)), generator=g)


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
        rounding = 4 * torch.finfo(torch.float32).eps * w.abs()  # float32 arithmetic, visible at 16 bits
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
        warnings.simplefilter("error", DeprecationWarning)  # quiet_ao must silence torch.ao's warnings
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


def test_ort_outputs_close_to_torch(tmp_path):
    torch.manual_seed(0)
    model = MLP(64, (32,)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(200, 1, 8, 8, generator=g)
    with torch.no_grad():
        ref = model(x)
    fp32 = Q.export_onnx(model, tmp_path / "m.onnx", x)
    np.testing.assert_allclose(Q.OrtModel(fp32)(x), ref.numpy(), rtol=1e-4, atol=1e-5)
    loader = [(x[:100], None), (x[100:], None)]
    for path in (Q.ort_quantize(fp32, tmp_path / "dyn.onnx"),
                 Q.ort_quantize(fp32, tmp_path / "static.onnx", loader, 2)):
        sess = Q.OrtModel(path)
        agree = Q.output_agreement(ref, sess(x))
        assert agree["relative_max_diff"] < 0.05 and agree["top1_agreement"] >= 0.9, agree
        assert sess.bytes < fp32.stat().st_size


def test_ort_quantize_bad_input(tmp_path):
    model = MLP(64, (8,)).eval()
    fp32 = Q.export_onnx(model, tmp_path / "m.onnx", torch.rand(2, 64))
    with pytest.raises(ParameterError, match="CALIBRATION_BATCHES"):
        Q.ort_quantize(fp32, tmp_path / "s.onnx", [(torch.rand(2, 64), None)], 0)
    with pytest.raises(ParameterError, match="ORT_FORMAT"):
        Q.ort_quantize(fp32, tmp_path / "s.onnx", [(torch.rand(2, 64), None)], 1, fmt="int4")


def test_same_runtime_speedups():
    import pandas as pd

    t = pd.DataFrame({"accuracy": [0.9, 0.895], "bytes": [400, 100], "latency_ms_b8": [2.0, 0.5]},
                     index=pd.Index(["a", "b"], name="model"))
    out = Q.same_runtime_speedups(t, [("a", "b")], [8])
    assert out.loc["b", "speedup_b8"] == 4.0 and out.loc["b", "size_ratio"] == 4.0
    assert out.loc["b", "accuracy_delta_points"] == pytest.approx(-0.5)
