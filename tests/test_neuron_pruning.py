"""Unit tests of nbhelpers.techniques.neuron_pruning (ranking criteria, unit selection, physical
removal) and of notebook 05's facts (nbhelpers.lessons.neuron_pruning)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nbhelpers import measure
from nbhelpers.core.models import MLP, LeNet5
from nbhelpers.core.params import ParameterError
from nbhelpers.lessons import neuron_pruning as L
from nbhelpers.techniques import neuron_pruning as NP


def small_models():
    """Small members of the shared family (with and without BatchNorm), in eval mode, with an input
    batch."""
    torch.manual_seed(0)
    out = []
    for m in (
        MLP(64, (32, 16)),
        MLP(64, (32, 16), batchnorm=True),
        LeNet5((1, 8, 8)),
        LeNet5((1, 8, 8), batchnorm=True),
        LeNet5((1, 28, 28)),
    ):
        if any(
            isinstance(x, nn.BatchNorm1d | nn.BatchNorm2d) for x in m
        ):  # non-trivial running statistics
            m.train()
            m(torch.rand(32, *getattr(m, "in_shape", (1, 8, 8))))
        out.append((m.eval(), torch.rand(16, *getattr(m, "in_shape", (1, 8, 8)))))
    return out


MODELS = small_models()
IDS = ["mlp", "mlp-bn", "lenet5-8x8", "lenet5-8x8-bn", "lenet5-28x28"]


def test_weight_norm_scores_on_known_tensors():
    m = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[3.0, -4.0, 0.0], [1.0, 1.0, -1.0]]))
    assert torch.allclose(NP.unit_scores(m, "l1")[0], torch.tensor([7.0, 3.0]))
    assert torch.allclose(NP.unit_scores(m, "l2")[0], torch.tensor([5.0, 3.0**0.5]))
    assert list(NP.unit_scores(m, "l1")) == [0]  # the classifier is never pruned


def test_conv_filter_norms():
    m = nn.Sequential(nn.Conv2d(2, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(3, 1))
    with torch.no_grad():
        m[0].weight.zero_()
        m[0].weight[1] = 1.0  # 8 ones
        m[0].weight[2, 0, 0, 0] = -2.0
    assert torch.allclose(NP.unit_scores(m, "l1")[0], torch.tensor([0.0, 8.0, 2.0]))
    assert torch.allclose(NP.unit_scores(m, "l2")[0], torch.tensor([0.0, 8**0.5, 2.0]))


def test_activation_criteria_on_known_tensors():
    m = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0], [-1.0], [2.0]]))
        m[0].bias.zero_()
    x = torch.tensor(
        [[1.0], [-1.0], [3.0], [0.0]]
    )  # unit 0: 1,0,3,0; unit 1: 0,1,0,0; unit 2: 2,0,6,0
    loader = DataLoader(
        TensorDataset(x, torch.zeros(4, dtype=torch.long)), batch_size=3
    )  # two batches
    stats = NP.activation_stats(m, loader)[0]
    assert torch.allclose(stats["mean_activation"], torch.tensor([1.0, 0.25, 2.0]))
    assert torch.allclose(stats["apoz"], torch.tensor([0.5, 0.75, 0.5]))
    assert torch.allclose(NP.unit_scores(m, "apoz", loader)[0], torch.tensor([0.5, 0.25, 0.5]))
    assert torch.allclose(
        NP.unit_scores(m, "mean_activation", loader)[0], torch.tensor([1.0, 0.25, 2.0])
    )
    with pytest.raises(ValueError, match="loader"):
        NP.unit_scores(m, "apoz")


def test_conv_activation_stats_pool_over_positions():
    m = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(8, 1))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
    x = torch.tensor([[1.0, -1.0], [2.0, 0.0]]).view(1, 1, 2, 2)
    stats = NP.activation_stats(m, [(x, torch.zeros(1))])[0]
    assert torch.allclose(stats["mean_activation"], torch.tensor([0.75, 0.25]))
    assert torch.allclose(stats["apoz"], torch.tensor([0.5, 0.75]))


def test_taylor_scores_by_hand():
    """|a_j dL/da_j| per example, averaged: dL/da = W2^T (softmax(z) - onehot(y)) for a ReLU MLP."""
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    m[2].weight.grad = torch.ones_like(m[2].weight)  # a gradient already there stays as it was
    before = {k: v.clone() for k, v in m.state_dict().items()}
    got = NP.unit_scores(m, "taylor", [(x[:2], y[:2]), (x[2:], y[2:])])[0]
    with torch.no_grad():
        a = torch.relu(m[0](x))
        delta = torch.softmax(m[2](a), 1) - nn.functional.one_hot(y, 2).float()
        want = (a * (delta @ m[2].weight)).abs().mean(0)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.equal(m[2].weight.grad, torch.ones_like(m[2].weight)) and m[0].weight.grad is None
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_taylor_scores_of_a_channel_average_over_positions_first():
    m = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    torch.manual_seed(4)
    x, y = torch.randn(3, 1, 2, 2), torch.tensor([0, 1, 0])
    got = NP.taylor_scores(m, [(x, y)])[0]
    a = torch.relu(m[0](x)).detach().requires_grad_(True)
    nn.functional.cross_entropy(m[3](m[2](a)), y, reduction="sum").backward()
    want = (a * a.grad).flatten(2).mean(2).abs().mean(0)  # mean over positions, then |.|
    assert torch.allclose(got, want.detach(), atol=1e-6) and got.shape == (2,)


def test_random_scores_repeat_with_seed():
    m = MLP(64, (32, 16))
    a, b, c = (NP.unit_scores(m, "random", seed=s) for s in (1, 1, 2))
    assert all(torch.equal(a[i], b[i]) for i in a) and not torch.equal(a[1], c[1])


def test_select_keep_layer_scope_drops_lowest():
    scores = {
        0: torch.tensor([0.5, 0.1, 0.9, 0.3]),
        2: torch.tensor([2.0, 1.0, 3.0, 0.0, 5.0, 4.0]),
    }
    keep = NP.select_keep(scores, 0.5)
    assert keep[0].tolist() == [0, 2] and keep[2].tolist() == [2, 4, 5]
    keep = NP.select_keep(scores, 0.25)  # floor(0.25 * n + 0.5): 1 of 4, 2 of 6
    assert keep[0].tolist() == [0, 2, 3] and keep[2].tolist() == [0, 2, 4, 5]


def test_select_keep_global_scope():
    scores = {0: torch.tensor([1.0, 1.0, 1.0, 1.0]), 2: torch.tensor([10.0, 0.0, 0.0, 30.0])}
    keep = NP.select_keep(scores, 0.5, scope="global")  # normalised: layer 2 is [1, 0, 0, 3]
    assert sum(len(k) for k in keep.values()) == 4
    assert keep[2].tolist() == [0, 3] and len(keep[0]) == 2
    flat = {
        0: torch.zeros(3),
        2: torch.tensor([1.0, 2.0, 3.0]),
    }  # a layer never loses all its units
    keep = NP.select_keep(flat, 0.6, scope="global")
    assert len(keep[0]) >= 1 and len(keep[2]) >= 1


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, "0.5", None, float("nan")])
def test_bad_fraction_raises(bad):
    with pytest.raises(ParameterError, match="PRUNE_FRACTION"):
        NP.check_prune_fraction("PRUNE_FRACTION", bad, [300, 100])


def test_fraction_that_empties_a_layer_raises():
    assert NP.check_prune_fraction("PRUNE_FRACTION", 0.9, [6, 16]) == 0.9  # 6 -> 1 left
    with pytest.raises(ParameterError, match="PRUNE_FRACTION.*layer 0 has 6 units"):
        NP.check_prune_fraction("PRUNE_FRACTION", 0.95, [6, 16])
    with pytest.raises(ParameterError, match="fraction"):
        NP.select_keep({0: torch.ones(2)}, 0.8)


def test_bad_criterion_and_scope_raise():
    with pytest.raises(ParameterError, match="CRITERIA"):
        NP.check_criteria("CRITERIA", ["l1", "hessian"])
    with pytest.raises(ParameterError, match="CRITERIA"):
        NP.check_criteria("CRITERIA", ["l1", "l1"])
    with pytest.raises(ParameterError, match="criterion"):
        NP.unit_scores(MLP(64, (8,)), "hessian")
    with pytest.raises(ValueError, match="'taylor' needs a data loader"):
        NP.unit_scores(MLP(64, (8,)), "taylor")
    with pytest.raises(ParameterError, match="scope"):
        NP.select_keep({0: torch.ones(4)}, 0.5, scope="model")


@pytest.mark.parametrize("model,x", MODELS, ids=IDS)
def test_removal_shapes_consistent(model, x):
    keep = NP.select_keep(NP.unit_scores(model, "l2"), 0.5)
    small = NP.remove_units(model, keep)
    assert NP.widths(small) == {i: len(k) for i, k in keep.items()}
    assert small(x).shape == model(x).shape
    for m in small:  # every BatchNorm matches the layer before it
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            assert m.running_mean.shape[0] == m.num_features
    assert measure.count_macs(small, x) < measure.count_macs(model, x)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert NP.widths(model) != NP.widths(small)  # the original is untouched


@pytest.mark.parametrize("model,x", MODELS, ids=IDS)
def test_removing_dead_units_keeps_outputs(model, x):
    dead = {i: torch.arange(0, n, 2) for i, n in NP.widths(model).items()}
    zeroed = NP.zero_outgoing(model, dead)
    found = NP.dead_units(zeroed)
    assert all(torch.equal(found[i], dead[i]) for i in dead)
    keep = {i: torch.arange(1, n, 2) for i, n in NP.widths(model).items()}
    small = NP.remove_units(zeroed, keep)
    with torch.no_grad():
        before, after = zeroed(x), small(x)
    # the removed terms are exact zeros; only the summation order of the kernels may differ
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    assert torch.equal(after.argmax(1), before.argmax(1))
    double = NP.remove_units(zeroed.double(), keep)
    torch.testing.assert_close(double(x.double()), zeroed.double()(x.double()), rtol=0, atol=1e-13)


def test_removing_dead_mlp_units_is_bit_exact():
    # Float sums depend on the kernel's order of summation, which changes with the width of the
    # layer
    # (29 inputs instead of 32) and with load. On dyadic values (multiples of 1/16, float64) every
    # partial sum is exactly representable, so any order gives the same bits: equality is exact.
    torch.manual_seed(1)
    m = MLP(64, (32, 16)).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.round(p * 64) / 16)
    x = torch.randint(0, 17, (8, 64), dtype=torch.float64) / 16
    dead = {1: torch.tensor([3, 7, 8]), 3: torch.tensor([0, 15])}
    zeroed = NP.zero_outgoing(m, dead)
    keep = {
        i: torch.tensor([j for j in range(n) if j not in dead[i]]) for i, n in NP.widths(m).items()
    }
    with torch.no_grad():
        out = zeroed(x)
        assert torch.equal(NP.remove_units(zeroed, keep)(x), out)
    assert out.abs().max() > 1  # not a trivial all-zero network


def test_flatten_boundary_keeps_channel_blocks():
    m = LeNet5((1, 8, 8)).eval()  # conv2 has 16 channels of 2x2 -> Linear(64, 120)
    small = NP.remove_units(m, {3: [1, 5]})
    fc = small[7]
    assert fc.in_features == 8
    expect = torch.cat([m[7].weight[:, 4:8], m[7].weight[:, 20:24]], 1)
    assert torch.equal(fc.weight, expect)


@pytest.mark.parametrize("model,x", MODELS[:1] + MODELS[2:3], ids=["mlp", "lenet5"])
def test_torch_pruning_matches_hand_surgery(model, x):
    keep = NP.select_keep(NP.unit_scores(model, "l1"), 0.5)
    by_hand = NP.remove_units(model, keep)
    by_tp = NP.torch_pruning_remove(model, x, keep)
    assert torch.equal(by_hand(x), by_tp(x))


def test_prune_end_to_end_and_bad_layer():
    m = MLP(64, (32, 16)).eval()
    small, keep = NP.prune(m, "random", 0.75, seed=0)
    assert NP.widths(small) == {1: 8, 3: 4}
    with pytest.raises(ValueError, match="can lose units"):
        NP.remove_units(m, {5: [0]})  # the classifier


def test_n_units_of_float_and_int8_layers():
    assert NP.n_units(nn.Linear(5, 3)) == 3 and NP.n_units(nn.Conv2d(2, 7, 3)) == 7
    int8 = torch.ao.quantization.quantize_dynamic(
        nn.Sequential(nn.Linear(5, 4)), {nn.Linear}, dtype=torch.qint8
    )
    assert NP.n_units(int8[0]) == 4


def test_complement_swaps_kept_and_removed():
    n = {1: 5, 3: 3}
    removed = NP.complement({1: torch.tensor([0, 3]), 3: [2]}, n)
    assert removed[1].tolist() == [1, 2, 4] and removed[3].tolist() == [0, 1]
    back = NP.complement(removed, n)
    assert back[1].tolist() == [0, 3] and back[3].tolist() == [2]
    assert NP.complement({}, {0: 2})[0].tolist() == [0, 1]  # a layer not listed: every unit


def test_zero_outgoing_zeroes_exact_columns_and_leaves_the_model():
    m = LeNet5((1, 8, 8)).eval()  # conv2 (position 3): 16 channels of 2x2 -> Linear(64, 120) at 7
    before = m[7].weight.detach().clone()
    z = NP.zero_outgoing(m, {3: [1, 5], 0: torch.tensor([2])})
    assert torch.equal(m[7].weight, before)  # the original is untouched
    assert (z[7].weight[:, 4:8] == 0).all() and (z[7].weight[:, 20:24] == 0).all()
    assert int((z[7].weight == 0).sum()) == int((before == 0).sum()) + 2 * 4 * 120
    assert (z[3].weight[:, 2] == 0).all() and int((z[3].weight == 0).sum()) == 16 * 25
    found = NP.dead_units(z)
    assert found[3].tolist() == [1, 5] and found[0].tolist() == [2]
    assert all(found[i].numel() == 0 for i in (7, 9))


def test_output_change_of_equal_and_changed_models():
    m = MLP(64, (8,)).eval()
    x = torch.rand(6, 64)
    assert NP.output_change(m, m, x) == {
        "max |logit difference|": 0.0,
        "bit-identical": True,
        "same predictions": True,
    }
    shifted = NP.zero_outgoing(m, {})
    with torch.no_grad():
        shifted[-1].bias += 0.25  # the same shift for every class: predictions stay
    c = NP.output_change(m, shifted, x)
    assert c["max |logit difference|"] == pytest.approx(0.25, abs=1e-6)
    assert c["bit-identical"] is False and c["same predictions"] is True


def test_shrinkage_of_the_mlp_at_half():
    m = MLP(784, (300, 100)).eval()
    small, _ = NP.prune(m, "l1", 0.5)
    s = NP.shrinkage(m, small, torch.zeros(1, 784))
    assert s["units_removed"] == pytest.approx(0.5) and s["params"] == 125810
    assert s["macs_ratio"] == pytest.approx(266200 / 125600)


def test_best_criterion_on_validation_and_the_control():
    sweep = pd.DataFrame(
        {
            "model": ["a"] * 4 + ["b"] * 4,
            "criterion": ["l1", "apoz", "random", "l1"] * 2,
            "fraction": [0.5, 0.5, 0.5, 0.75] * 2,
            "val_accuracy": [0.8, 0.9, 0.95, 0.99, 0.7, 0.7, 0.9, 0.1],
        }
    )
    assert NP.best_criterion(sweep, 0.5) == {
        "a": "apoz",
        "b": "l1",
    }  # random only a control; ties: first
    assert NP.best_criterion(sweep, 0.75) == {"a": "l1", "b": "l1"}
    only = sweep[sweep.criterion == "random"]
    assert NP.best_criterion(only, 0.5) == {"a": "random", "b": "random"}


def test_time_by_type_sums_shares_and_speedups():
    per_layer = pd.DataFrame(
        {"dense ms": [4.0, 1.0, 3.0, 2.0], "structured ms": [2.0, 0.5, 1.0, 2.0]},
        index=["0 Conv2d", "1 ReLU", "2 Conv2d", "3 Linear"],
    )
    t = L.time_by_type(per_layer)
    assert list(t.index) == ["Conv2d", "ReLU", "Linear"]
    assert t.loc["Conv2d", "dense ms"] == 7.0 and t.loc["Conv2d", "structured ms"] == 3.0
    assert t.loc["Conv2d", "dense share"] == 0.7 and t.loc["Conv2d", "speedup"] == pytest.approx(
        7 / 3
    )
    assert t.loc["Linear", "speedup"] == 1.0


def _table(arch: str) -> tuple[pd.DataFrame, dict[str, str]]:
    names = {
        "dense": f"{arch} fp32",
        "structured": f"{arch} structured",
        "unstructured": f"{arch} unstr",
    }
    t = pd.DataFrame(
        {
            "accuracy": [0.95, 0.94, 0.945],
            "macs": [1000, 250, 1000],
            "bytes": [4000, 1000, 4000],
            "accuracy_delta_points": [0.0, -1.0, -0.5],
            "size_ratio": [1.0, 4.0, 1.0],
            "speedup_b1": [1.0, 1.2, 1.0],
            "speedup_b256": [1.0, 3.0, 0.9],
        },
        index=list(names.values()),
    )
    return t, names


def test_summary_facts_on_known_tables():
    sweep = pd.DataFrame(
        {
            "model": ["mlp"] * 4,
            "criterion": ["l1", "random", "l1", "random"],
            "fraction": [0.5, 0.5, 0.75, 0.75],
            "one_shot_accuracy": [0.6, 0.3, 0.2, 0.1],
            "val_accuracy": [0.9, 0.8, 0.7, 0.6],
            "accuracy": [0.93, 0.91, 0.80, 0.70],
        }
    )
    table, names = _table("mlp")
    dead = pd.DataFrame(
        {"max |logit difference|": [1e-6], "bit-identical": [False], "same predictions": [True]},
        index=pd.Index(["mlp"], name="model"),
    )
    tp = pd.DataFrame({"max |logit difference|": [0.0]})
    per_layer = pd.DataFrame(
        {"dense ms": [2.0, 1.0, 1.0], "structured ms": [2.0, 0.5, 0.25]},
        index=["0 Conv2d", "1 MaxPool2d", "2 Conv2d"],
    )
    targets = [{"met": True}, {"met": False}]
    f = L.summary(
        sweep,
        {"mlp": table},
        {"mlp": names},
        dead,
        tp,
        per_layer,
        fraction=0.5,
        n_test=10000,
        targets=targets,
    )["value"]
    assert f["mlp: best criterion"] == "l1"
    assert (
        f["mlp: one-shot accuracy, lowest"] == 0.3 and f["mlp: one-shot accuracy, highest"] == 0.6
    )
    assert f["mlp: fine-tuned spread of the criteria"] == 2.0
    assert f["mlp: fine-tuned spread, largest fraction"] == 10.0
    assert f["mlp: best criterion minus random"] == 2.0
    assert (
        f["dead units: bit-identical logits"] is False and f["dead units: same predictions"] is True
    )
    assert f["torch-pruning: max |logit difference|"] == 0.0
    assert (
        f["mlp structured: fewer MACs"] == 4.0
        and f["mlp structured: speedup, largest batch"] == 3.0
    )
    assert f["mlp structured: speedup, smallest batch"] == 1.2
    assert f["mlp structured: speedup below MAC reduction"] is True
    assert f["mlp unstructured: speedup, largest batch"] == 0.9
    assert f["mlp: unstructured minus structured accuracy"] == 0.5
    assert f["mlp: unstructured keeps accuracy at least as well"] is True
    assert f["lenet5 Conv2d: share of dense time"] == 0.75 and f[
        "lenet5 Conv2d: speedup"
    ] == pytest.approx(1.33)
    assert f["lenet5 MaxPool2d: speedup"] == 2.0 and f["lenet5 first layer: speedup"] == 1.0
    assert f["one test image"] == 0.01 and f["standard error of mlp's accuracy"] == 0.22
    assert f["targets met"] == "1 of 2"
    assert "mlp: one-shot, share of the most predicted class, highest" not in f.index
    shifted = sweep.assign(
        one_shot_top_class_share=[0.6, 0.15, 0.9, 0.2], one_shot_logit_scale=[0.4, 0.2, 0.3, 0.1]
    )
    g = L.summary(
        shifted, {"mlp": table}, {"mlp": names}, dead, tp, per_layer, fraction=0.5, n_test=10000
    )
    assert g.loc["mlp: one-shot, share of the most predicted class, highest", "value"] == 0.6
    assert g.loc["mlp: one-shot, share of the most predicted class, highest", "context"] == (
        "l1, fraction 0.5, before fine-tuning"
    )
    assert g.loc["mlp: one-shot, random: share of the most predicted class", "value"] == 0.15
    assert g.loc["mlp: one-shot, random: logit scale", "value"] == 0.2
    assert g.loc["mlp: one-shot, random: logit scale", "context"].endswith("is 0.2000")
    no_tp = L.summary(
        sweep,
        {"mlp": table},
        {"mlp": names},
        dead,
        tp.iloc[:0],
        per_layer,
        fraction=0.5,
        n_test=100,
    )
    assert (
        "torch-pruning: max |logit difference|" not in no_tp.index
        and "targets met" not in no_tp.index
    )


def test_inverted_l1_removes_the_units_l1_keeps():
    m = MLP(16, (8,)).eval()
    good = NP.unit_scores(m, "l1")
    bad = NP.unit_scores(m, "inverted_l1")
    keep_good = NP.select_keep(good, 0.5)
    keep_bad = NP.select_keep(bad, 0.5)
    assert set(keep_good[1].tolist()).isdisjoint(keep_bad[1].tolist())  # the opposite halves
    assert len(keep_bad[1]) == 4


def test_best_criterion_never_picks_a_control():
    sweep = pd.DataFrame(
        {
            "model": ["a"] * 3,
            "fraction": [0.5] * 3,
            "criterion": ["l1", "random", "inverted_l1"],
            "val_accuracy": [0.5, 0.9, 0.95],
        }
    )
    assert NP.best_criterion(sweep, 0.5) == {"a": "l1"}
    assert "inverted_l1" in NP.CRITERIA and set(NP.CONTROLS) <= set(NP.CRITERIA)


def test_correct_over_seeds_one_row_per_seed_and_repeatable():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 6, generator=gen)
    y = (x[:, 0] > 0.5).long()

    def loaders_for(seed: int) -> dict:
        shuffled = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True,
                              generator=torch.Generator().manual_seed(seed))  # fmt: skip
        fixed = DataLoader(TensorDataset(x, y), batch_size=40)
        return {"train": shuffled, "val": fixed, "test": fixed}

    torch.manual_seed(0)
    model = MLP(6, hidden=[8], n_classes=2).eval()
    l1 = NP.unit_scores(model, "l1")
    args = (0.5, [0, 1], loaders_for, 2, 1e-2)
    a = NP.correct_over_seeds(model, "l1", l1, *args)
    assert a.shape == (2, 40) and a.dtype == bool
    assert (NP.correct_over_seeds(model, "l1", l1, *args) == a).all()  # seeded: repeats exactly
    r = NP.correct_over_seeds(model, "random", None, *args)
    assert r.shape == (2, 40) and (NP.correct_over_seeds(model, "random", None, *args) == r).all()
    assert NP.widths(model) == {1: 8}  # the dense model is left as it was
