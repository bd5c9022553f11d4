"""Unit tests of nbhelpers.pruning: exact sparsity, growing masks, prune.remove, schedules, storage."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nbhelpers import pruning as P
from nbhelpers.models import LeNet5, MLP
from nbhelpers.params import ParameterError


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
    kept = torch.cat([(b.weight.abs())[a.weight != 0] for (_, a), (_, b) in zip(P.prunable(m), P.prunable(base))])
    cut = torch.cat([(b.weight.abs())[a.weight == 0] for (_, a), (_, b) in zip(P.prunable(m), P.prunable(base))])
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
    assert P.layer_sparsity(m).loc["1", "sparsity"] == 0 and P.layer_sparsity(m).loc["5", "sparsity"] == 0
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
            assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in state.items())
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
    assert payload == nnz * 6 + 4 * (300 + 100 + 10 + 3) + 8 * 2 * 3 + 4 * 410  # values, indices, indptr, shape, biases
    assert P.save_sparse(state, tmp_path / "s.npz") < dense / 10


def test_csr_model_matches_the_dense_model():
    m = P.make_permanent(P.magnitude_prune(mlp(), 0.9))
    x = torch.rand(5, 1, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(P.to_csr_model(m)(x), m(x), atol=1e-6)


def test_kernel_latency_table():
    w = P.make_permanent(P.magnitude_prune(mlp(), 0.9, "layer"))[1].weight
    df = P.kernel_latency(w, (1, 4), repeats=2)
    assert list(df.kernel) == ["dense", "sparse csr"] * 2 and (df.median_ms > 0).all()
    assert df.sparsity.iloc[0] == pytest.approx(0.9, abs=1e-3)
