"""Unit tests of nbhelpers.techniques.pruning (exact sparsity, growing masks, prune.remove,
schedules, storage) and of notebook 04's lesson code (nbhelpers.lessons.weight_pruning)."""

from __future__ import annotations

import copy
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nbhelpers.core.models import MLP, LeNet5
from nbhelpers.core.params import ParameterError
from nbhelpers.core.train import fit, seed_everything
from nbhelpers.lessons import weight_pruning as W
from nbhelpers.lessons.baseline import summary as baseline_summary
from nbhelpers.measure import serialized_bytes
from nbhelpers.measure.facts import CONTEXT_WIDTH, fact_table
from nbhelpers.measure.verdicts import above_chance, interval_text, verdict_reason
from nbhelpers.techniques import pruning as P


def mlp() -> nn.Module:
    """A small MLP with random weights (no exact ties among magnitudes)."""
    torch.manual_seed(0)
    return MLP(64, (32, 16)).eval()


def zeros(model: nn.Module) -> int:
    """Zero weights of the prunable layers, counted on the effective weights."""
    return sum(int((m.weight == 0).sum()) for _, m in P.prunable(model))


def total(model: nn.Module) -> int:
    """Number of prunable weights."""
    return sum(m.weight.numel() for _, m in P.prunable(model))


@pytest.mark.parametrize("s", [0.1, 0.5, 0.9, 0.95, 0.999])
def test_global_pruning_reaches_sparsity_exactly(s):
    m = P.magnitude_prune(mlp(), s, "global")
    assert zeros(m) == round(s * total(m))  # to one weight
    assert P.sparsity(m) == pytest.approx(round(s * total(m)) / total(m))


def test_global_pruning_removes_the_smallest_magnitudes():
    base = mlp()
    m = P.magnitude_prune(copy.deepcopy(base), 0.7, "global")
    kept = torch.cat(
        [(b.weight.abs())[a.weight != 0] for (_, a), (_, b) in zip(P.prunable(m), P.prunable(base))]
    )
    cut = torch.cat(
        [(b.weight.abs())[a.weight == 0] for (_, a), (_, b) in zip(P.prunable(m), P.prunable(base))]
    )
    assert cut.max() < kept.min()


def test_layer_pruning_reaches_sparsity_in_every_layer():
    m = P.magnitude_prune(mlp(), 0.8, "layer")
    for _, layer in P.prunable(m):
        assert int((layer.weight == 0).sum()) == round(0.8 * layer.weight.numel())


def test_repeated_pruning_grows_masks_to_the_absolute_sparsity():
    m = mlp()
    P.magnitude_prune(m, 0.5, "global")
    before = [layer.weight_mask.clone() for _, layer in P.prunable(m)]
    for s in (0.7, 0.9):
        P.magnitude_prune(m, s, "global")
        assert zeros(m) == round(s * total(m))
    for b, (_, layer) in zip(before, P.prunable(m)):
        assert bool(((b == 0) <= (layer.weight_mask == 0)).all())  # a pruned weight stays pruned
    P.magnitude_prune(m, 0.5, "global")  # asking for less does not un-prune
    assert zeros(m) == round(0.9 * total(m))


def test_only_prunes_the_named_layer():
    m = P.magnitude_prune(mlp(), 0.9, "layer", only=["3"])
    assert P.layer_sparsity(m).loc["3", "sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert (
        P.layer_sparsity(m).loc["1", "sparsity"] == 0
        and P.layer_sparsity(m).loc["5", "sparsity"] == 0
    )
    with pytest.raises(ParameterError, match="only"):
        P.magnitude_prune(mlp(), 0.5, "layer", only=["nope"])


def test_conv_layers_are_pruned_too():
    torch.manual_seed(0)
    m = P.magnitude_prune(LeNet5((1, 8, 8)), 0.6, "global")
    assert zeros(m) == round(0.6 * total(m))
    assert any(isinstance(x, nn.Conv2d) for _, x in P.prunable(m))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_bad_sparsity_raises(bad):
    with pytest.raises(ParameterError, match="sparsity"):
        P.magnitude_prune(mlp(), bad)


def test_bad_scope_and_run_raise():
    with pytest.raises(ParameterError, match="scope"):
        P.magnitude_prune(mlp(), 0.5, "row")
    for bad in ["gradual", "gradual/row", "magic/global", "a/b/c", 3]:
        with pytest.raises(ParameterError, match="SWEEP_RUNS"):
            P.check_run("SWEEP_RUNS", bad)
    assert P.check_run("SWEEP_RUNS", "iterative/layer") == ("iterative", "layer")


def test_threshold_prune_equals_global_one_shot():
    base = mlp()
    naive = P.threshold_prune(copy.deepcopy(base), P.global_threshold(base, 0.8))
    pruned = P.magnitude_prune(copy.deepcopy(base), 0.8, "global")
    for (_, a), (_, b) in zip(P.prunable(naive), P.prunable(pruned)):
        assert torch.equal(a.weight, b.weight)


def test_prune_remove_keeps_the_zeros_and_outputs():
    m = P.magnitude_prune(mlp(), 0.9, "global")
    x = torch.rand(8, 64)
    y = m(x)
    masks = {n: layer.weight_mask.clone() for n, layer in P.prunable(m)}
    P.make_permanent(m)
    assert not P.is_pruned(m)
    assert not any(k.endswith(("_orig", "_mask")) for k in m.state_dict())
    assert zeros(m) == round(0.9 * total(m))
    for n, layer in P.prunable(m):
        assert isinstance(layer.weight, nn.Parameter)
        assert torch.equal(layer.weight == 0, masks[n] == 0)
    assert torch.equal(m(x), y)
    fresh = MLP(64, (32, 16))
    fresh.load_state_dict(m.state_dict())
    assert zeros(fresh) == zeros(m)


def test_cubic_schedule():
    assert P.cubic_sparsity(0, 0.9, 0, 100) == 0.0
    assert P.cubic_sparsity(100, 0.9, 0, 100) == pytest.approx(0.9)
    assert P.cubic_sparsity(500, 0.9, 0, 100) == pytest.approx(0.9)
    assert P.cubic_sparsity(50, 0.9, 0, 100) == pytest.approx(0.9 * (1 - 0.5**3))
    assert P.cubic_sparsity(60, 0.8, 10, 110, initial=0.2) == pytest.approx(0.8 - 0.6 * 0.5**3)
    vals = [P.cubic_sparsity(t, 0.95, 0, 50) for t in range(51)]
    steps = [b - a for a, b in zip(vals, vals[1:])]
    assert all(d >= 0 for d in steps) and steps[0] > steps[-1]  # fast first, slow at the end


def test_iterative_sparsities_keep_the_same_fraction_each_round():
    s = P.iterative_sparsities(0.96, 2)
    assert s == pytest.approx([0.8, 0.96])
    assert P.iterative_sparsities(0.9, 1) == pytest.approx([0.9])


def test_gradual_pruner_follows_the_schedule():
    m = mlp()
    hook = P.GradualPruner(0.9, begin=0, end=20, every=5)
    for _ in range(25):
        hook(m)
    assert [t for t, _ in hook.history] == [5, 10, 15, 20]
    assert zeros(m) == round(0.9 * total(m))


def test_sparse_storage_round_trips(tmp_path):
    torch.manual_seed(0)
    for model in (P.magnitude_prune(mlp(), 0.95), P.magnitude_prune(LeNet5((1, 8, 8)), 0.9)):
        state = P.make_permanent(model).state_dict()
        for compress in (False, True):
            path = tmp_path / f"m{compress}.npz"
            assert P.save_sparse(state, path, compress) == path.stat().st_size
            back = P.load_sparse(path)
            assert set(back) == set(state)
            assert all(
                torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in state.items()
            )
        P.save_torch_sparse(state, tmp_path / "t.pt")
        back = P.load_torch_sparse(tmp_path / "t.pt")
        assert all(torch.equal(back[k], v) for k, v in state.items())


def test_sparse_storage_is_small_and_refuses_masks(tmp_path):
    torch.manual_seed(0)
    m = P.magnitude_prune(MLP(), 0.95)  # the real 784-300-100-10 shape
    with pytest.raises(ValueError, match="prune.remove"):
        P.sparse_arrays(m.state_dict())
    state = P.make_permanent(m).state_dict()
    arrays = P.sparse_arrays(state)
    nnz = round(0.05 * total(m))
    assert sum(len(arrays[k]) for k in arrays if k.endswith(".values")) == nnz
    assert all(arrays[k].dtype == "uint16" for k in arrays if k.endswith(".indices"))
    dense = sum(v.numel() * 4 for v in state.values())
    payload = sum(a.nbytes for a in arrays.values())
    assert (
        payload == nnz * 6 + 4 * (300 + 100 + 10 + 3) + 8 * 2 * 3 + 4 * 410
    )  # values, indices, indptr, shape, biases
    assert P.save_sparse(state, tmp_path / "s.npz") < dense / 10


def test_compact_csr_has_storages_of_its_own_size():
    w = torch.zeros(6, 10)
    w[0, 3], w[2, 7], w[5, 0] = 1.0, -2.0, 0.5
    default, compact = P.sparse_csr(w), P.sparse_csr(w, compact=True)
    assert torch.equal(default.to_dense(), w) and torch.equal(compact.to_dense(), w)
    assert compact.col_indices().untyped_storage().nbytes() == 3 * 8
    assert compact.crow_indices().untyped_storage().nbytes() == 7 * 8
    assert compact.values().untyped_storage().nbytes() == 3 * 4
    assert default.col_indices().untyped_storage().nbytes() >= 3 * 8  # 2 x 3 in torch 2.x


@pytest.mark.parametrize("compact", [False, True])
def test_torch_sparse_bytes_predicted_to_the_pickle(tmp_path, compact):
    state = P.make_permanent(P.magnitude_prune(MLP(), 0.95)).state_dict()
    path = tmp_path / "m_csr.pt"
    measured = P.save_torch_sparse(state, path, compact=compact)
    assert all(torch.equal(P.load_torch_sparse(path)[k], v) for k, v in state.items())
    with zipfile.ZipFile(path) as z:
        pickle = z.getinfo("m_csr/data.pkl").file_size
    layout = "torch csr compact" if compact else "torch csr"
    p = P.predicted_bytes(state, layout, "m_csr", pickle)
    assert p["predicted"] == measured  # to the byte, given the pickle's size
    unknown = P.predicted_bytes(state, layout, "m_csr")["predicted"]
    assert 0 < measured - unknown < pickle + 64  # without it: short by the pickle, and padding
    nnz = round(0.05 * total(MLP()))
    assert p["values"] == 4 * nnz and p["row pointers"] == 8 * (301 + 101 + 11)
    assert p["column indices"] == (8 if compact else 16) * nnz
    assert p["textbook"] == 12 * nnz and p["other"] == 4 * 410


def test_dense_and_npz_bytes_predicted(tmp_path):
    model = P.make_permanent(P.magnitude_prune(MLP(), 0.9))
    state = model.state_dict()
    measured = P.save_sparse(state, tmp_path / "s.npz")
    p = P.predicted_bytes(state, "npz csr")
    assert p["predicted"] == measured  # npz: exact
    nnz = round(0.1 * total(model))
    assert p["values"] == 4 * nnz and p["column indices"] == 2 * nnz
    assert p["row pointers"] == 4 * (301 + 101 + 11) and p["textbook"] == 6 * nnz
    torch.save(state, tmp_path / "d.pt")
    with zipfile.ZipFile(tmp_path / "d.pt") as z:
        pickle = z.getinfo("d/data.pkl").file_size
    d = P.predicted_bytes(state, "torch dense", "d", pickle)
    assert d["predicted"] == (tmp_path / "d.pt").stat().st_size
    assert d["values"] == 4 * total(model) and d["other"] == 4 * 410
    with pytest.raises(ParameterError, match="layout"):
        P.predicted_bytes(state, "csv")


def test_storage_prediction_and_its_facts(tmp_path):
    state = P.make_permanent(P.magnitude_prune(MLP(), 0.95)).state_dict()
    files = {
        "dense": (tmp_path / "d.pt", serialized_bytes(state, tmp_path / "d.pt"), None),
        "torch": (tmp_path / "t.pt", P.save_torch_sparse(state, tmp_path / "t.pt"), None),
        "npz": (tmp_path / "s.npz", P.save_sparse(state, tmp_path / "s.npz"), None),
    }
    storage = W.storage_table(files, state, baseline="dense")
    layouts = {"dense": ("torch dense", state, "archive"), "torch": ("torch csr", state, "t"),
               "npz": ("npz csr", state, "")}  # fmt: skip
    t = W.storage_prediction(layouts, storage)
    assert t.loc["npz", "prediction error %"] == 0.0
    torch_rows = t.loc[["dense", "torch"], "prediction error %"]
    assert (torch_rows < 0).all() and (torch_rows > -1).all()  # short by the pickle alone
    nnz = round(0.05 * total(MLP()))
    assert t.loc["torch", "bytes per non-zero weight"] == files["torch"][1] / nnz
    assert t.loc["torch", "times smaller, measured"] == storage.loc["torch", "times smaller"]
    facts = fact_table(W.storage_facts(t)).value
    assert facts["prediction error: npz"] == 0.0 and "textbook error: dense" not in facts
    assert facts["textbook error: torch"] < -30  # 12 bytes per weight where the file spends 20
    assert facts["torch CSR: bytes per column index on disk"] == 16.0


def test_csr_model_matches_the_dense_model():
    m = P.make_permanent(P.magnitude_prune(mlp(), 0.9))
    x = torch.rand(5, 1, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(P.to_csr_model(m)(x), m(x), atol=1e-6)


# ---------------------------------------------------------------- the notebook's tables and facts


def compare_rows(rows: dict[str, dict]) -> pd.DataFrame:
    """A ``measure.compare``-shaped table from {model: columns}, the first model the baseline."""
    df = pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")
    base = df.iloc[0]
    df["size_ratio"] = base["bytes"] / df["bytes"]
    for bs in (1, 64):
        df[f"speedup_b{bs}"] = base[f"latency_ms_b{bs}"] / df[f"latency_ms_b{bs}"]
    return df


def row(
    acc,
    params,
    nonzero,
    nbytes,
    ms1,
    ms64,
    delta=0.0,
    lo=None,
    hi=None,
    p=None,
    verdict="baseline",
    acc_lo=None,
    acc_hi=None,
):
    return {
        "accuracy": acc,
        "accuracy_low": acc_lo if acc_lo is not None else acc - 0.01,
        "accuracy_high": acc_hi if acc_hi is not None else acc + 0.01,
        "params": params,
        "nonzero": nonzero,
        "bytes": nbytes,
        "latency_ms_b1": ms1,
        "latency_ms_b64": ms64,
        "accuracy_delta_points": delta,
        "delta_low_points": lo,
        "delta_high_points": hi,
        "p_mcnemar": p,
        "verdict": verdict,
    }


def test_same_weights_and_reparametrisation():
    base = mlp()
    naive = P.threshold_prune(copy.deepcopy(base), P.global_threshold(base, 0.8))
    pruned = P.magnitude_prune(copy.deepcopy(base), 0.8, "global")
    assert W.same_weights(naive, pruned) and not W.same_weights(base, pruned)
    assert not W.same_weights(base, MLP(64, (32,)))  # different number of layers
    info = W.reparametrisation(pruned[1])
    assert info["parameters"] == "bias, weight_orig" and info["buffers"] == "weight_mask"
    assert info["forward_pre_hooks"] and info["weight == weight_orig * weight_mask"] is True
    plain = W.reparametrisation(base[1])
    assert plain == {
        "parameters": "weight, bias",
        "buffers": "",
        "forward_pre_hooks": "",
        "weight == weight_orig * weight_mask": False,
    }


def test_accuracy_row_measures_sparsity_and_both_accuracies():
    model = P.magnitude_prune(mlp(), 0.5, "global")
    x = torch.rand(20, 64)
    y = model(x).argmax(1)  # labels the model gets right, then half of them wrong
    val = DataLoader(TensorDataset(x, y), batch_size=8)
    half_wrong = torch.where(torch.arange(20) < 10, y, (y + 1) % 10)
    test = DataLoader(TensorDataset(x, half_wrong), batch_size=8)
    r = W.accuracy_row(model, "one-shot/global", 0.5, val, test, seconds=1.5)
    assert r == {
        "run": "one-shot/global",
        "sparsity": 0.5,
        "measured_sparsity": P.sparsity(model),
        "val_accuracy": 1.0,
        "test_accuracy": 0.5,
        "train_seconds": 1.5,
    }
    assert r["measured_sparsity"] == round(0.5 * total(model)) / total(model)


def test_global_layer_sparsity_leaves_the_model_and_reaches_each_level():
    base = mlp()
    before = copy.deepcopy(base.state_dict())
    table = W.global_layer_sparsity(base, [0.5, 0.9])
    assert list(table.columns) == ["0.5", "0.9"] and list(table.index) == ["1", "3", "5", "total"]
    n = total(base)
    assert table.loc["total", "0.9"] == round(0.9 * n) / n
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())
    assert not P.is_pruned(base)


def test_storage_table_ratios_and_round_trips(tmp_path):
    state = P.make_permanent(P.magnitude_prune(mlp(), 0.9)).state_dict()
    dense, sparse = tmp_path / "d.pt", tmp_path / "s.npz"
    torch.save(state, dense)
    wrong = {k: v + 1 for k, v in state.items()}
    files = {
        "dense": (dense, 4000, None),
        "sparse": (sparse, P.save_sparse(state, sparse), P.load_sparse),
        "wrong": (sparse, 1000, lambda p: wrong),
        "missing key": (sparse, 800, lambda p: dict(list(state.items())[:1])),
    }
    t = W.storage_table(files, state, baseline="dense")
    assert list(t.index) == ["dense", "sparse", "wrong", "missing key"]
    assert t.loc["dense", "times smaller"] == 1.0 and t.loc["wrong", "times smaller"] == 4.0
    assert t.loc["dense", "round-trips exactly"] is None
    assert t.loc["sparse", "round-trips exactly"] is True
    assert t.loc["wrong", "round-trips exactly"] is False
    assert t.loc["missing key", "round-trips exactly"] is False
    assert t.loc["sparse", "file"] == "s.npz" and t.loc["sparse", "bytes"] == sparse.stat().st_size


def kernels() -> pd.DataFrame:
    """Hand-made kernel timings: at batch 1 dense always wins; at batch 64 CSR wins from 0.9."""
    ms = {
        (1, 0.0): (1, 5),
        (1, 0.9): (1, 2),
        (1, 0.99): (1, 1.5),
        (64, 0.0): (2, 9),
        (64, 0.9): (2, 1),
        (64, 0.99): (2, 0.5),
    }
    return pd.DataFrame(
        [
            {"kernel": k, "batch_size": bs, "median_ms": t, "sparsity": s, "shape": "4x8"}
            for (bs, s), pair in ms.items()
            for k, t in zip(("dense", "sparse csr"), pair)
        ]
    )


def test_sparse_kernel_wins():
    wins = W.sparse_kernel_wins(kernels())
    assert list(wins.index) == [1, 64] and np.isnan(wins[1]) and wins[64] == 0.9


def pruning_tables():
    at_target = pd.DataFrame(
        {
            "run": [
                W.NAIVE_RUN,
                W.LAYER_NO_FINETUNE_RUN,
                "one-shot/layer",
                "one-shot/global",
                "iterative/global",
                "gradual/global",
            ],
            "sparsity": 0.95,
            "test_accuracy": [0.45, 0.26, 0.93, 0.945, 0.94, 0.946],
        }
    ).set_index("run")
    comparison = compare_rows(
        {
            "dense": row(0.944, 1000, 1000, 4000, 0.1, 2.0),
            "pruned": row(
                0.946,
                1000,
                50,
                250,
                0.1,
                2.5,
                delta=0.2,
                lo=-0.18,
                hi=0.5,
                p=0.36,
                verdict="within noise",
            ),
            "csr": row(
                0.946,
                1000,
                50,
                500,
                0.2,
                0.8,
                delta=0.2,
                lo=-0.18,
                hi=0.5,
                p=0.36,
                verdict="within noise",
            ),
        }
    )
    storage = pd.DataFrame(
        {"format": ["dense", "npz"], "bytes": [4000, 250], "times smaller": [1.0, 16.0]}
    ).set_index("format")
    layers = pd.Series({"1": 0.958, "3": 0.897, "5": 0.658, "total": 0.95})
    return at_target, comparison, storage, kernels(), layers


def test_pruning_summary_states_this_runs_facts():
    f = W.summary(
        *pruning_tables(),
        pruned="pruned",
        csr="csr",
        best_run="gradual/global",
        naive_equals_global=True,
    )
    assert list(f.columns) == ["value", "unit", "context"] and f.index.name == "fact"
    v = f["value"]
    assert v["naive threshold: test accuracy"] == 0.45
    assert v["best fine-tuned run: test accuracy"] == 0.946
    assert f.loc["best fine-tuned run: test accuracy", "context"] == "gradual/global, sparsity 0.95"
    assert v["fine-tuning beats the naive threshold"] is True
    assert f.loc["fine-tuning beats the naive threshold", "context"].startswith("+49.60 points")
    assert (
        f.loc["one matrix: sparse kernel first faster, batch 64", "context"]
        == "W 4x8, timed from 0 to 0.99"
    )
    assert f["context"].str.len().max() <= CONTEXT_WIDTH  # pandas shows every context in full
    long_format = "times smaller: pruned, CSR npz (uint16 indices)"  # the notebook's longest name
    assert max(f.index.str.len().max(), len(long_format)) <= CONTEXT_WIDTH
    assert v["naive mask identical to global one-shot"] is True
    layers = [v[f"layer {n}: sparsity under one global threshold"] for n in "135"]
    assert layers == [0.958, 0.897, 0.658]
    assert v["no fine-tuning: global minus layer-wise"] == 19.0
    assert v["one-shot: global minus layer-wise"] == 1.5
    assert v["spread of the fine-tuned global runs"] == 0.6
    assert v["run chosen on validation"] == "gradual/global"
    assert v["chosen run: accuracy change vs dense"] == 0.2
    assert (
        f.loc["chosen run: accuracy change vs dense", "context"]
        == "95% CI [-0.18, +0.50], McNemar p = 0.36"
    )
    assert v["chosen run: verdict vs dense"] == "within noise"
    reason = f.loc["chosen run: verdict vs dense", "context"]
    assert reason == "the paired 95% interval contains zero"
    assert v["non-zero weights"] == 50 and v["times smaller: npz"] == 16.0
    assert v["pruned, dense kernels: speed vs dense, batch 64"] == 0.8
    assert v["pruned, CSR kernels: speed vs dense, batch 64"] == 2.5
    assert v["CSR-kernel model faster than dense, batch 1"] is False
    assert v["CSR-kernel model faster than dense, batch 64"] is True
    assert v["one matrix: sparse kernel first faster, batch 1"] == "never"
    assert v["one matrix: sparse kernel first faster, batch 64"] == 0.9


def test_pruning_summary_without_optional_runs():
    at_target, comparison, storage, kern, layers = pruning_tables()
    at_target = at_target.loc[[W.NAIVE_RUN, W.LAYER_NO_FINETUNE_RUN, "one-shot/global"]]
    at_target.loc["one-shot/global", "test_accuracy"] = 0.4  # fine-tuning lost to the naive mask
    f = W.summary(
        at_target,
        comparison,
        storage,
        kern,
        layers,
        pruned="pruned",
        csr="csr",
        best_run="one-shot/global",
        naive_equals_global=False,
    )
    assert f.loc["fine-tuning beats the naive threshold", "value"] is False
    assert "one-shot: global minus layer-wise" not in f.index
    assert "spread of the fine-tuned global runs" not in f.index  # a single global run


# ---------------------------------------------------------------- fact tables
# (nbhelpers.core.baseline)


def test_fact_table_and_helpers():
    f = fact_table([("a", 1.5, "x", "ctx"), ("b", True, "", ""), ("c", "text", "", "")])
    assert list(f.index) == ["a", "b", "c"] and f["value"].dtype == object
    assert f.loc["b", "value"] is True and f.loc["a", "unit"] == "x"
    with pytest.raises(ValueError, match="unique"):
        fact_table([("a", 1, "", ""), ("a", 2, "", "")])
    assert above_chance({"accuracy_low": 0.11}) and not above_chance({"accuracy_low": 0.1})
    assert above_chance({"accuracy_low": 0.3}, n_classes=4)
    assert not above_chance({"accuracy_low": 0.2}, n_classes=4)
    text = interval_text(
        {"delta_low_points": -1.234, "delta_high_points": 0.5, "p_mcnemar": 0.0123}
    )
    assert text == "95% CI [-1.23, +0.50], McNemar p = 0.012"
    reasons = [
        verdict_reason({"delta_low_points": lo, "delta_high_points": hi})
        for lo, hi in [(0.1, 2.0), (-2.0, -0.1), (-0.1, 0.1), (0.0, 1.0)]
    ]
    assert reasons == [
        "the paired 95% interval " + w
        for w in ("lies above zero", "lies below zero", "contains zero", "contains zero")
    ]


def test_baseline_summary():
    table = compare_rows(
        {
            "mlp": row(0.9444, 266610, 266610, 1069077, 0.07, 1.8, acc_lo=0.9397),
            "lenet5": row(
                0.9705,
                61706,
                61706,
                250309,
                0.28,
                13.5,
                delta=2.61,
                lo=2.2,
                hi=3.0,
                p=1e-20,
                verdict="better",
                acc_lo=0.05,
            ),
        }
    )
    f = baseline_summary(table, {"mlp": 266200, "lenet5": 416520}, n_test=10000)
    v = f["value"]
    assert v["parameters, mlp / lenet5"] == 4.32
    assert f.loc["parameters, mlp / lenet5", "context"] == "266,610 vs 61,706"
    assert v["multiply-adds per image, lenet5 / mlp"] == 1.56
    assert v["bytes on disk, mlp / lenet5"] == 4.27
    assert v["accuracy change, lenet5 vs mlp"] == 2.61 and v["verdict, lenet5 vs mlp"] == "better"
    assert f.loc["verdict, lenet5 vs mlp", "context"] == "the paired 95% interval lies above zero"
    assert v["speed of lenet5 / mlp, batch 1"] == 0.25
    assert v["speed of lenet5 / mlp, batch 64"] == 0.13
    assert v["mlp above chance"] is True and v["lenet5 above chance"] is False
    assert v["one test image"] == 0.01
    assert f["context"].str.len().max() <= CONTEXT_WIDTH
    assert f.index.str.len().max() <= CONTEXT_WIDTH
    assert v["standard error of mlp's accuracy"] == 0.23  # sqrt(0.9444 * 0.0556 / 10000) = 0.229%


def test_largest_linear_names_the_layer_with_most_weights():
    from nbhelpers.core.models import build_model

    assert P.largest_linear(build_model("mlp")) == "1"  # 784 x 300
    assert P.largest_linear(build_model("lenet5_caffe")) == "5"  # 800 x 500
    with pytest.raises(ValueError, match="no nn.Linear"):
        P.largest_linear(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)))


@pytest.mark.notebook
def test_notebook_prunes_caffe_lenet5(tmp_path):
    """04 with MODEL="lenet5_caffe" (Han et al.'s LeNet-5): convolutions pruned too, saved and
    reloaded, timed on the 800 x 500 layer."""
    from pathlib import Path

    from notebook_runner import run

    nb = Path(__file__).resolve().parents[1] / "notebooks" / "04_weight_pruning.ipynb"
    r = run(
        nb,
        tmp_path,
        MODEL="lenet5_caffe",
        BASELINE_EPOCHS=1,
        SWEEP_RUNS=["one-shot/global"],
        SENSITIVITY_SPARSITIES=[0.5],
        FINETUNE_EPOCHS=1,
        ITERATIVE_ROUNDS=1,
        LOTTERY_SEEDS=[],
    )
    assert r.status == "ok", r.error
    rec = r.records
    assert rec["pruned_model"] == "lenet5_caffe pruned 90%"
    assert rec["comparison_baseline"] == "lenet5_caffe fp32"
    assert all(rec["permanent_checks"].values())
    layers = rec["chosen_layer_sparsity"]
    assert set(layers) >= {"0", "2", "5", "7"} and layers["0"] > 0 and layers["2"] > 0
    weights = 20 * 25 + 20 * 50 * 25 + 800 * 500 + 500 * 10
    assert rec["pruned_nonzero_weights"] == pytest.approx(weights * 0.1, abs=1)
    assert rec["targets"][0]["name"] == "LeNet-5 (Caffe) weights removed"
    assert "the 580 biases are kept" in rec["targets"][0]["note"]


def _lottery_setup():
    torch.manual_seed(0)
    x = torch.randn(96, 12)
    y = (x[:, :3].sum(1) > 0).long() + 2 * (x[:, 3] > 0).long()
    data = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True,
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    return (lambda: MLP(12, hidden=[16], n_classes=4)), data


def test_lottery_ticket_rewinds_the_dense_runs_weights_under_its_own_mask():
    build, data = _lottery_setup()
    runs = P.lottery_ticket(build, data, epochs=3, sparsity=0.75, rewind=[0, 1], seed=4)
    assert list(runs) == ["dense", "rewound to epoch 0", "rewound to epoch 1", "fresh weights"]
    dense = runs["dense"]
    expected = P.masks(P.magnitude_prune(copy.deepcopy(dense), 0.75, "global"))
    for name in ("rewound to epoch 0", "rewound to epoch 1", "fresh weights"):
        m = runs[name]
        assert not P.is_pruned(m) and P.sparsity(m) == pytest.approx(0.75, abs=0.01)
        for layer, mask in expected.items():  # the same mask: zeros exactly where it says
            w = m.get_submodule(layer).weight
            assert torch.equal(w[mask == 0], torch.zeros_like(w[mask == 0]))
    torch.manual_seed(4)
    init = build()  # the dense run's initialisation (the same seed)
    fresh0 = runs["fresh weights"][1].weight
    assert not torch.allclose(fresh0, init[1].weight * expected["1"])
    again = P.lottery_ticket(build, _lottery_setup()[1], 3, 0.75, [0, 1], seed=4)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            runs["rewound to epoch 1"].state_dict().values(),
            again["rewound to epoch 1"].state_dict().values(),
        )
    )


def test_lottery_ticket_bad_rewind():
    build, data = _lottery_setup()
    for bad in ([3], [-1], []):
        with pytest.raises(ParameterError, match="rewind"):
            P.lottery_ticket(build, data, epochs=3, sparsity=0.5, rewind=bad, seed=0)
    with pytest.raises(ParameterError, match="layer_masks"):
        P.apply_masks(build(), {"9": torch.ones(1)})


def test_lottery_table_compares_with_the_control_over_seeds():
    control = [np.array([1, 1, 0, 0, 1, 0, 1, 0]), np.array([1, 0, 0, 0, 1, 0, 1, 0])]
    ticket = [np.array([1, 1, 1, 0, 1, 0, 1, 0]), np.array([1, 1, 1, 0, 1, 0, 1, 0])]
    t = P.lottery_table({"ticket": ticket, "fresh weights": control})
    assert t.loc["ticket", "test_mean"] == pytest.approx(5 / 8)
    assert t.loc["fresh weights", "test_mean"] == pytest.approx((4 / 8 + 3 / 8) / 2)
    # per image, mean over the two seeds: +0.5 (image 2) twice... (1/8 + 2/8) / 2 = 0.1875
    assert t.loc["ticket", "vs fresh weights (points)"] == pytest.approx(18.75)
    assert t.loc["fresh weights", "verdict"] == "control" and t.loc["ticket", "seeds"] == 2


@pytest.mark.parametrize(
    "override, name",
    [({"LOTTERY_REWIND": [15]}, "LOTTERY_REWIND"), ({"LOTTERY_SEEDS": [0, -1]}, "LOTTERY_SEEDS")],
)
def test_notebook_bad_lottery_parameters_fail_in_validation(override, name, tmp_path):
    from pathlib import Path

    from notebook_runner import assert_fails_in_validation

    nb = Path(__file__).resolve().parents[1] / "notebooks" / "04_weight_pruning.ipynb"
    assert_fails_in_validation(nb, tmp_path, name, BASELINE_EPOCHS=15, **override)


def test_snapshots_are_the_weights_of_those_epochs_and_rewinding_restores_them_exactly():
    build, _ = _lottery_setup()

    def loader():
        return _lottery_setup()[1]  # the same batches in the same order each time

    seed_everything(3)
    model = build()
    snaps = P.train_with_snapshots(model, loader(), epochs=3, at=[1, 2])
    assert sorted(snaps) == [0, 1, 2]
    seed_everything(3)
    again = build()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in snaps[0].items())
    fit(again, loader(), epochs=1, lr=1e-3, progress=False)  # one epoch alone: the same weights
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in snaps[1].items())
    mask = P.masks(P.magnitude_prune(copy.deepcopy(model), 0.5, "global"))
    ticket = P.rewound_ticket(build, snaps[1], mask)
    for name, m in mask.items():
        layer = ticket.get_submodule(name)
        assert torch.equal(layer.weight_orig, snaps[1][f"{name}.weight"])
        assert torch.equal(layer.weight, snaps[1][f"{name}.weight"] * m)


def test_kernel_latency_table():
    w = torch.randn(300, 784, generator=torch.Generator().manual_seed(0))
    w.view(-1)[w.abs().view(-1).argsort()[: int(0.9 * w.numel())]] = 0  # 90% smallest to zero
    df = P.kernel_latency(w, (1, 4), repeats=2)
    assert list(df.kernel) == ["dense", "sparse csr"] * 2 and (df.median_ms > 0).all()
    assert df.sparsity.iloc[0] == pytest.approx(0.9, abs=1e-3)
