"""nbhelpers.techniques.compression's record stages: the arithmetic coder decodes what it encoded,
the compact artifact gives back identical weights with exact byte counts, the codebook stage
trains its centroids with Han et al.'s summed gradient, per-layer gradual pruning reaches its
shares, and the size chain's factors multiply to the whole."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from notebook_runner import validation_error
from torch import nn

from nbhelpers.core.models import MLP, build_model
from nbhelpers.core.params import ParameterError
from nbhelpers.techniques.compression import (
    LayerPruner,
    bake,
    check_keep,
    check_record,
    compact,
    prune_layers_gradually,
    share_weights,
    shared,
    size_stages,
    stage_table,
    tune_codebooks,
)
from nbhelpers.techniques.compression.coder import (
    MAX_TOTAL,
    Decoder,
    Encoder,
    Model,
    read_varint,
    write_varint,
)
from nbhelpers.techniques.quantization.kmeans import linear_kmeans


def _round_trip(symbols, size, increment=24):
    enc, m = Encoder(), Model(size, increment)
    for s in symbols:
        enc.encode(m, s)
    data = enc.finish()
    dec, m2 = Decoder(data), Model(size, increment)
    return data, [dec.decode(m2) for _ in symbols]


@pytest.mark.parametrize("size", [1, 2, 7, 300])
def test_coder_round_trip(size):
    rng = np.random.default_rng(size)
    symbols = rng.integers(0, size, 3000).tolist()
    _, back = _round_trip(symbols, size)
    assert back == symbols


def test_coder_skewed_and_adaptive_close_to_entropy():
    rng = np.random.default_rng(0)
    symbols = rng.choice(4, 20000, p=[0.85, 0.1, 0.04, 0.01]).tolist()
    data, back = _round_trip(symbols, 4)
    assert back == symbols
    counts = np.bincount(symbols, minlength=4)
    entropy = -(counts * np.log2(counts / counts.sum())).sum() / 8
    # an adaptive code pays a small learning cost over the empirical entropy: within 2% here
    assert entropy <= len(data) <= 1.02 * entropy + 8


def test_coder_halves_counts_and_stays_decodable():
    m = Model(3, increment=1024)
    for _ in range(200):
        m.update(0)
    assert m.total <= MAX_TOTAL and min(m.freq) >= 1
    symbols = [0] * 5000 + [2] * 5 + [1] * 3
    assert _round_trip(symbols, 3, 1024)[1] == symbols


def test_coder_model_bad_input():
    with pytest.raises(ParameterError, match="size"):
        Model(0)
    with pytest.raises(ParameterError, match="increment"):
        Model(4, increment=0)
    with pytest.raises(ParameterError, match="symbol"):
        Encoder().encode(Model(3), 3)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**35 + 5])
def test_varint_round_trip_and_length(value):
    out = bytearray(b"x")
    write_varint(out, value)
    assert len(out) - 1 == max(1, math.ceil(value.bit_length() / 7))
    assert read_varint(bytes(out), 1) == (value, len(out))


def test_varint_bad_input():
    with pytest.raises(ParameterError, match="value"):
        write_varint(bytearray(), -1)
    with pytest.raises(ValueError, match="truncated"):
        read_varint(b"\x80", 0)


def _shared_model(arch="mlp", density=0.05, k=8, seed=0):
    """A model whose weights are sparse and take k float16 values per layer, biases float16."""
    torch.manual_seed(seed)
    model = build_model(arch) if arch != "tiny" else MLP(12, hidden=[6, 5], n_classes=3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                book = torch.linspace(-0.5, 0.5, k).half().float()
                keep = torch.rand(m.weight.shape) < density
                m.weight.copy_(torch.where(keep, book[torch.randint(0, k, m.weight.shape)], 0))
                m.bias.copy_(m.bias.half().float())
    return compact.zero_dead_biases(model)[0]


@pytest.mark.parametrize("arch", ["tiny", "mlp", "lenet5_caffe"])
def test_compact_round_trip_identical(arch):
    model = _shared_model(arch, density=0.3 if arch == "tiny" else 0.03)
    data = compact.encode(model)
    back = compact.decode(data, build_model(arch) if arch != "tiny" else MLP(12, [6, 5], 3))
    want, got = model.state_dict(), back.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    x = torch.rand(20, 1, 28, 28) if arch != "tiny" else torch.rand(20, 12)
    assert torch.equal(model.eval()(x), back(x))


def test_compact_header_bytes_exact():
    model = _shared_model("tiny", density=0.5, k=4)
    data = compact.encode(model)
    layers, pos = compact.read_header(data)
    # version, layer count, then per layer: ndim, 2 dims, nnz, k, stored biases + 1 (each < 128)
    assert pos == 2 + 3 * 6
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    assert [layer["nnz"] for layer in layers] == [int((w != 0).sum()) for w in weights]
    assert [layer["shape"] for layer in layers] == [(6, 12), (5, 6), (3, 5)]
    alive = compact.outgoing_alive([w.detach().numpy() for w in weights])
    tables = sum(2 * (la["k"] + int(a.sum())) for la, a in zip(layers, alive))
    assert [la["biases"] for la in layers] == [int(a.sum()) for a in alive]
    assert len(data) > pos + tables  # the arithmetic-coded stream follows the tables


def test_compact_dead_units_biases_dropped_and_outputs_unchanged():
    model = MLP(4, hidden=[3], n_classes=2)
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 0, 0.25]]))
        model[1].bias.copy_(torch.tensor([0.5, -0.25, 2.0]))
        model[3].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 0, 0.5]]))  # unit 1 feeds nothing
        model[3].bias.copy_(torch.tensor([0.125, 0.0]))
    out, zeroed = compact.zero_dead_biases(model)
    assert zeroed == 1 and out[1].bias.tolist() == [0.5, 0.0, 2.0]
    x = torch.randn(50, 4)
    assert torch.equal(out(x), model(x))
    data = compact.encode(out)
    assert compact.read_header(data)[0][0]["biases"] == 2
    assert torch.equal(compact.decode(data, MLP(4, [3], 2))(x), model(x))
    with pytest.raises(ParameterError, match="dead units"):
        compact.encode(model)


def test_outgoing_alive_conv_and_flatten_groups():
    conv2 = np.zeros((4, 3, 2, 2), np.float32)
    conv2[0, 1, 0, 0] = 1
    fc = np.zeros((5, 4 * 6), np.float32)  # 4 channels of 2x3 maps flattened
    fc[2, 3 * 6 + 5] = 1
    alive = compact.outgoing_alive([np.ones((3, 1, 2, 2)), conv2, fc])
    assert alive[0].tolist() == [False, True, False]
    assert alive[1].tolist() == [False, False, False, True]
    assert alive[2].all()


def test_compact_rejects_unshared_weights():
    model = MLP(8, hidden=[4], n_classes=2)
    with pytest.raises(ParameterError, match="weight"):
        compact.encode(compact.zero_dead_biases(model)[0])
    shared_model = _shared_model("tiny", density=0.6)
    with torch.no_grad():
        shared_model[5].bias.add_(1e-4)  # the outputs' biases are always stored
    with pytest.raises(ParameterError, match="float32 biases"):
        compact.encode(shared_model)
    with pytest.raises(ValueError, match="version"):
        compact.decode(b"\x09", MLP(12, [6, 5], 3))
    data = compact.encode(_shared_model("tiny"))
    with pytest.raises(ValueError, match="layers"):
        compact.decode(data, MLP(12, [6, 4], 3))


def test_matrix_shape_and_positions():
    assert compact.matrix_shape((50, 20, 5, 5)) == (1000, 25)
    assert compact.matrix_shape((10, 500)) == (10, 500)
    with pytest.raises(ParameterError, match="shape"):
        compact.matrix_shape((3, 4, 5))
    w = np.zeros((3, 4), np.float32)
    w[0, 1], w[2, 3], w[2, 1] = 1, 2, 3
    rows, cols, pos = compact.positions(w)
    assert rows.tolist() == [True, False, True] and cols.tolist() == [False, True, False, True]
    assert pos.tolist() == [0, 2, 3]  # the 2x2 submatrix [[1, 0], [3, 2]]


def test_codebook_rejects_non_float16_and_too_many():
    with pytest.raises(ParameterError, match="float16"):
        compact.codebook(np.array([0.1, 0.0], np.float32))
    many = np.unique(np.linspace(0.01, 8, 9000).astype(np.float16)).astype(np.float32)
    assert len(many) > compact.MAX_CODEBOOK
    with pytest.raises(ParameterError, match="at most"):
        compact.codebook(many)
    values, index = compact.codebook(np.array([[0.5, 0, -0.25], [0.5, 0.25, 0]], np.float32))
    assert values.tolist() == [-0.25, 0.25, 0.5] and index.tolist() == [2, 0, 2, 1]


def test_linear_kmeans_linear_init_and_small_sets():
    centroids, labels = linear_kmeans(np.array([0.0, 0.1, 1.0, 1.1]), 2)
    assert np.allclose(sorted(centroids), [0.05, 1.05]) and labels.tolist() in ([0, 0, 1, 1],)
    centroids, labels = linear_kmeans(np.array([2.0, 2.0, 3.0]), 8)
    assert len(centroids) == 2
    with pytest.raises(ParameterError, match="values"):
        linear_kmeans(np.array([]), 2)
    with pytest.raises(ParameterError, match="k"):
        linear_kmeans(np.array([1.0]), 0)


def _pruned_mlp():
    torch.manual_seed(1)
    model = MLP(12, hidden=[6, 5], n_classes=3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_((torch.rand(m.weight.shape) < 0.6).float())
    return model


def test_share_weights_keeps_zeros_and_levels():
    model = _pruned_mlp()
    out, table = share_weights(model, [2, 1, 3])
    assert table["shared values"].tolist() == [4, 2, min(8, int((model[5].weight != 0).sum()))]
    for (_, p), m, m0 in zip(shared(out), [out[1], out[3], out[5]], [model[1], model[3], model[5]]):
        assert torch.equal(m.weight == 0, m0.weight == 0)
        assert len(torch.unique(m.weight[m.weight != 0])) <= len(p.centroids)
    with pytest.raises(ParameterError, match="bits"):
        share_weights(model, [2, 2])
    with pytest.raises(ParameterError, match="bits"):
        share_weights(model, 0)


def test_centroid_gradient_is_the_sum_over_its_weights():
    model = _pruned_mlp()
    out, _ = share_weights(model, 2)
    x = torch.randn(7, 12)
    out(x).square().sum().backward()
    layer = out[1]
    p = layer.parametrizations["weight"][0]
    # autograd through centroids[index] sums the weights' gradients per centroid (Han et al. eq. 3)
    w = layer.weight.detach().requires_grad_(True)
    h = torch.relu(torch.nn.functional.linear(x, w, layer.bias))
    y = out[5](torch.relu(out[3](h)))
    (gw,) = torch.autograd.grad(y.square().sum(), w)
    want = torch.zeros_like(p.centroids).index_add_(0, p.index[p.index >= 0], gw[p.index >= 0])
    assert torch.allclose(p.centroids.grad, want, atol=1e-5)


def test_bake_rounds_to_float16_and_encodes():
    out, _ = share_weights(_pruned_mlp(), 3)
    with torch.no_grad():
        shared(out)[0][1].centroids.add_(1e-3)
    baked = bake(out)
    assert not shared(baked)
    for m in baked.modules():
        if isinstance(m, nn.Linear):
            assert torch.equal(m.weight.half().float(), m.weight)
            assert torch.equal(m.bias.half().float(), m.bias)
    ready = compact.zero_dead_biases(baked)[0]
    want = compact.decode(compact.encode(ready), MLP(12, [6, 5], 3)).state_dict()
    assert all(torch.equal(v, want[k]) for k, v in ready.state_dict().items())
    with pytest.raises(ParameterError, match="share_weights"):
        bake(MLP(4, [3], 2))


def _loader(n=64, d=12, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def test_prune_layers_gradually_reaches_each_share():
    torch.manual_seed(0)
    model = MLP(12, hidden=[6, 5], n_classes=3)
    keep = [0.25, 0.5, 0.8]
    _, pruner = prune_layers_gradually(model, _loader(), keep, 3, 1e-2)
    for m, k, n in zip([model[1], model[3], model[5]], keep, [72, 30, 15]):
        assert int((m.weight != 0).sum()) == n - round((1 - k) * n)
    assert pruner.history[-1][1] == pytest.approx([0.75, 0.5, 0.2])
    with pytest.raises(ParameterError, match="keep"):
        LayerPruner(model, [0.5, 0.5], 10, 2)
    with pytest.raises(ParameterError, match="epochs"):
        prune_layers_gradually(model, _loader(), keep, 0, 1e-2)


def test_check_keep():
    assert check_keep("RECORD_KEEP", [1, 0.5], 2) == [1.0, 0.5]
    for bad in ([0.5], [0.0, 0.5], [1.5, 0.5], "0.5", [True, 0.5]):
        with pytest.raises(ParameterError, match="RECORD_KEEP"):
            check_keep("RECORD_KEEP", bad, 2)


def test_tune_codebooks_gives_an_encodable_model():
    torch.manual_seed(0)
    model = _pruned_mlp()
    ready, table = tune_codebooks(model, _loader(), 2, 1, 1e-2)
    assert len(table) == 3
    data = compact.encode(ready)
    back = compact.decode(data, MLP(12, [6, 5], 3))
    x = torch.randn(9, 12)
    assert torch.equal(ready(x), back(x))


def test_stage_table_factors_multiply():
    t = stage_table({"dense": 1000, "a": 100, "b": 50})
    assert t["smaller_than_dense"].tolist() == [1.0, 10.0, 20.0]
    assert t["smaller_than_previous"].iloc[1:].tolist() == [10.0, 2.0]
    assert t["share_of_factor"].iloc[1:].sum() == pytest.approx(1.0)
    assert t["share_of_factor"].iloc[2] == pytest.approx(math.log(2) / math.log(20))
    with pytest.raises(ParameterError, match="sizes"):
        stage_table({"dense": 10, "a": 0})


def test_size_stages_exact_bytes():
    model = MLP(4, hidden=[3], n_classes=2)
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[0.5, 0, 0, 0], [0, 0.25, 0, 0], [0, 0, 0, 0.5]]))
        model[1].bias.copy_(torch.tensor([0.5, 0.0, 2.0]))
        model[3].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 0, 0.5]]))
        model[3].bias.copy_(torch.tensor([0.125, 0.0]))
    t = size_stages(model, 10_000)
    head = 2 + 2 * 6
    # pruning: bitmaps (2 + 1 bytes), 3 + 2 float32 weights, 3 + 2 float32 biases
    assert t.loc["pruning", "bytes"] == head + 3 + 20 + 20
    # codebook: k = 2 values per layer -> 1-bit indices (1 byte each layer), float16 codebooks
    assert t.loc["codebook", "bytes"] == head + 3 + 2 + 2 * 2 * 2 + 20
    # float16 biases, only units that feed the next layer (2 of 3) and the 2 outputs
    assert t.loc["biases float16", "bytes"] == head + 3 + 2 + 8 + 2 * 4
    # positions: layer 1 has rows 3, cols 4 -> 7 flags; submatrix 3x3 positions 0, 4, 8: gaps
    # 1, 4, 4 -> best Rice r=0: 1 + 4 + 4 = 9 bits; 3 index bits: ceil(19 / 8) + 1 byte for r.
    # layer 2: rows 2, cols 2 (units 0 and 2) -> 4 flags, positions 0, 3: gaps 1, 3 -> r=0: 1 + 3
    # bits (or r=1: 2 + 3 = 5); 2 index bits: ceil(10 / 8) + 1
    assert t.loc["position coding", "bytes"] == head + (3 + 1) + (2 + 1) + 8 + 8
    assert t.loc["entropy coder", "bytes"] == len(compact.encode(model))
    assert t.loc["dense float32", "bytes"] == 10_000
    assert isinstance(t, pd.DataFrame) and list(t.index)[0] == "dense float32"


RECORD = {"keep": [0.05, 0.5], "epochs": 1, "lr": 0.001, "bits": [3], "tune_epochs": 1}


def test_check_record():
    assert check_record("RECORD", {}, 3) == {}
    out = check_record("RECORD", {**RECORD, "keep": [0.1, 0.2, 1]}, 3)
    assert out["bits"] == [3, 3, 3] and out["keep"] == [0.1, 0.2, 1.0] and out["lr"] == 0.001
    assert check_record("RECORD", {**RECORD, "bits": [4, 5]}, 2)["bits"] == [4, 5]
    for bad, key in (
        ([], "RECORD"),
        ({"keep": [0.5, 0.5]}, "RECORD"),
        ({**RECORD, "extra": 1}, "RECORD"),
        ({**RECORD, "keep": [0.5]}, "RECORD['keep']"),
        ({**RECORD, "bits": [3, 4, 5]}, "RECORD['bits']"),
        ({**RECORD, "bits": [0]}, "RECORD['bits']"),
        ({**RECORD, "epochs": 0}, "RECORD['epochs']"),
        ({**RECORD, "tune_epochs": -1}, "RECORD['tune_epochs']"),
        ({**RECORD, "lr": 0}, "RECORD['lr']"),
    ):
        with pytest.raises(ParameterError) as err:
            check_record("RECORD", bad, 2)
        assert key in str(err.value), (bad, str(err.value))


NB = Path(__file__).resolve().parents[1] / "notebooks" / "10_compression_pipeline.ipynb"


@pytest.mark.parametrize(
    "override, name",
    [
        ({"RECORD": {**RECORD, "keep": [0.05, 0.5, 0.5]}}, "RECORD['keep']"),  # the student: 2
        ({"RECORD": {**RECORD, "bits": [13]}}, "RECORD['bits']"),
        ({"RECORD": {"keep": [0.1, 0.1]}}, "RECORD"),
        ({"RECORD": {**RECORD, "epochs": 0}}, "RECORD['epochs']"),
        (
            {
                "MODEL": "lenet5_caffe",
                "DISTILL_EPOCHS": 0,
                "STRUCT_FRACTION": 0,
                "MO_TRIALS": 0,
                "RECORD": RECORD,
            },
            "RECORD['keep']",
        ),  # Caffe's LeNet-5 has 4 weight layers
    ],
)
def test_bad_record_stops_notebook_10_in_validation(override, name, tmp_path):
    err = validation_error(NB, tmp_path, **override)
    assert isinstance(err, ParameterError) and name in str(err), repr(err)


def test_artifact_summary_wilson_and_ratio():
    from nbhelpers.measure.stats import wilson_interval
    from nbhelpers.techniques.compression import artifact_summary

    hits = np.array([1] * 9_900 + [0] * 100)
    rec = artifact_summary(hits, 10_000, 1_720_000, True, 0.99)
    lo, hi = wilson_interval(100, 10_000)
    assert rec["test_errors"] == 100 and rec["test_error_pct"] == pytest.approx(1.0)
    assert (rec["error_low"], rec["error_high"]) == pytest.approx((100 * lo, 100 * hi))
    assert rec["times_smaller"] == 172.0 and rec["val_error_pct"] == pytest.approx(1.0)
    with pytest.raises(ParameterError, match="hits"):
        artifact_summary(np.array([]), 10, 100, True, 0.5)
    with pytest.raises(ParameterError, match="artifact_bytes"):
        artifact_summary(hits, 0, 100, True, 0.5)


def test_record_lesson_rows():
    from nbhelpers.lessons import compression_pipeline as lesson
    from nbhelpers.techniques.compression import artifact_summary

    assert lesson.record_layers("mlp", [300, 100], 20) == 3
    assert (
        lesson.record_layers("mlp", [32], 2) == 2
        and lesson.record_layers("lenet5_caffe", [], 0) == 4
    )
    table = lesson.published_frontier("lenet5_caffe")
    assert table["times smaller"].is_monotonic_increasing and 162.0 in set(table["times smaller"])
    assert set(lesson.published_frontier("mlp")["times smaller"]) == {40.0, 64.0}
    with pytest.raises(ParameterError, match="MODEL"):
        lesson.published_frontier("lenet5")
    rec = artifact_summary(np.array([1] * 9_910 + [0] * 90), 10_000, 1_720_000, True, 0.99)
    met = [t["met"] for t in lesson.record_targets(rec, "lenet5_caffe")]
    assert met == [True, True, True]  # 172x > 162x, 0.9% <= 1.0%, identical
    rec = artifact_summary(np.array([1] * 9_880 + [0] * 120), 20_000, 1_069_000, False, 0.99)
    assert [t["met"] for t in lesson.record_targets(rec, "mlp")] == [False, True, False]
    shares = stage_table({"dense float32": 1000, "pruning": 100, "entropy coder": 10})
    facts = lesson.record_facts(rec, shares)
    names = [f[0] for f in facts]
    assert names[:3] == [
        "record: times smaller than the dense file",
        "record: test error",
        "record: decoded artifact gives the same outputs",
    ]
    assert names[3:] == ["record component: pruning", "record component: entropy coder"]
    assert facts[3][1] == 10.0 and facts[3][3].startswith("50%")


def test_record_rows_in_the_papers_tables():
    from nbhelpers.reporting import claims, paper
    from nbhelpers.reporting.record_claims import RECORD_CAFFE, RECORD_MLP
    from nbhelpers.techniques.compression import artifact_summary

    caffe = artifact_summary(np.array([1] * 9_915 + [0] * 85), 8_000, 1_727_000, True, 0.991)
    mlp = artifact_summary(np.array([1] * 9_830 + [0] * 170), 17_000, 1_069_000, True, 0.983)
    records = {RECORD_CAFFE: {"record": caffe, "model": "lenet5_caffe"},
               RECORD_MLP: {"record": mlp, "model": "mlp"}}  # fmt: skip
    table = claims.claims_table(records, {RECORD_CAFFE: 900.0})
    rec = table[table["notebook"].isin([RECORD_MLP, RECORD_CAFFE])].set_index(
        ["notebook", "metric"]
    )
    assert len(rec) == 5
    assert rec.loc[(RECORD_CAFFE, "smaller on disk (x)"), "ours"] == pytest.approx(215.875)
    assert rec.loc[(RECORD_CAFFE, "smaller (x)"), "published"] == 419.0
    err = rec.loc[(RECORD_MLP, "test error (%)")]
    assert err["ours"] == pytest.approx(1.7) and err["low"] < 1.7 < err["high"]
    targets = claims.profile_targets(records)
    names = [t["name"] for t in targets]
    assert names == [
        f"Compression record, {m}: {n}"
        for m in ("LeNet-300-100", "LeNet-5 (Caffe)")
        for n in ("times smaller on disk than the dense file",
                  "test error of the decoded artifact",
                  "decoded artifact gives the same outputs")
    ]  # fmt: skip
    # LeNet-300-100: 1,069,000 / 17,000 = 62.9x, short of 64x; 1.7% <= 1.8%; LeNet-5: 215.9x, 0.85%
    assert [t["met"] for t in targets] == [False, True, True, True, True, True]
    runs = paper.profile_runs()
    assert {RECORD_MLP, RECORD_CAFFE} <= set(runs)
