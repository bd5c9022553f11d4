"""Unit tests of nbhelpers.neuron_pruning: ranking criteria, unit selection, physical removal."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nbhelpers import neuron_pruning as NP
from nbhelpers.models import LeNet5, MLP
from nbhelpers.params import ParameterError


def small_models():
    """Small members of the shared family (with and without BatchNorm), in eval mode, with an input batch."""
    torch.manual_seed(0)
    out = []
    for m in (MLP(64, (32, 16)), MLP(64, (32, 16), batchnorm=True), LeNet5((1, 8, 8)),
              LeNet5((1, 8, 8), batchnorm=True), LeNet5((1, 28, 28))):
        if any(isinstance(x, nn.BatchNorm1d | nn.BatchNorm2d) for x in m):  # non-trivial running statistics
            m.train()
            m(torch.rand(32, *getattr(m, "in_shape", (1, 8, 8))))
        out.append((m.eval(), torch.rand(16, *getattr(m, "in_shape", (1, 8, 8)))))
    return out


MODELS = small_models()
IDS = ["mlp", "mlp-bn", "lenet5-8x8", "lenet5-8x8-bn", "lenet5-28x28"]


def kill_outgoing(model: nn.Sequential, dead: dict[int, torch.Tensor]) -> nn.Sequential:
    """A copy whose given units have all-zero outgoing weights (next layer's input columns)."""
    m = copy.deepcopy(model)
    layers = NP.weighted_layers(m)
    with torch.no_grad():
        for i, nxt in zip(layers[:-1], layers[1:]):
            w = m[nxt].weight
            w.view(w.shape[0], NP.widths(m)[i], -1)[:, dead[i]] = 0
    return m


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
    x = torch.tensor([[1.0], [-1.0], [3.0], [0.0]])  # unit 0: 1,0,3,0; unit 1: 0,1,0,0; unit 2: 2,0,6,0
    loader = DataLoader(TensorDataset(x, torch.zeros(4, dtype=torch.long)), batch_size=3)  # two batches
    stats = NP.activation_stats(m, loader)[0]
    assert torch.allclose(stats["mean_activation"], torch.tensor([1.0, 0.25, 2.0]))
    assert torch.allclose(stats["apoz"], torch.tensor([0.5, 0.75, 0.5]))
    assert torch.allclose(NP.unit_scores(m, "apoz", loader)[0], torch.tensor([0.5, 0.25, 0.5]))
    assert torch.allclose(NP.unit_scores(m, "mean_activation", loader)[0], torch.tensor([1.0, 0.25, 2.0]))
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


def test_random_scores_repeat_with_seed():
    m = MLP(64, (32, 16))
    a, b, c = (NP.unit_scores(m, "random", seed=s) for s in (1, 1, 2))
    assert all(torch.equal(a[i], b[i]) for i in a) and not torch.equal(a[1], c[1])


def test_select_keep_layer_scope_drops_lowest():
    scores = {0: torch.tensor([0.5, 0.1, 0.9, 0.3]), 2: torch.tensor([2.0, 1.0, 3.0, 0.0, 5.0, 4.0])}
    keep = NP.select_keep(scores, 0.5)
    assert keep[0].tolist() == [0, 2] and keep[2].tolist() == [2, 4, 5]
    keep = NP.select_keep(scores, 0.25)  # floor(0.25 * n + 0.5): 1 of 4, 2 of 6
    assert keep[0].tolist() == [0, 2, 3] and keep[2].tolist() == [0, 2, 4, 5]


def test_select_keep_global_scope():
    scores = {0: torch.tensor([1.0, 1.0, 1.0, 1.0]), 2: torch.tensor([10.0, 0.0, 0.0, 30.0])}
    keep = NP.select_keep(scores, 0.5, scope="global")  # normalised: layer 2 is [1, 0, 0, 3]
    assert sum(len(k) for k in keep.values()) == 4
    assert keep[2].tolist() == [0, 3] and len(keep[0]) == 2
    flat = {0: torch.zeros(3), 2: torch.tensor([1.0, 2.0, 3.0])}  # a layer never loses all its units
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
        NP.check_criteria("CRITERIA", ["l1", "taylor"])
    with pytest.raises(ParameterError, match="CRITERIA"):
        NP.check_criteria("CRITERIA", ["l1", "l1"])
    with pytest.raises(ParameterError, match="criterion"):
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
    assert NP.count_macs(small, x) < NP.count_macs(model, x)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert NP.widths(model) != NP.widths(small)  # the original is untouched


@pytest.mark.parametrize("model,x", MODELS, ids=IDS)
def test_removing_dead_units_keeps_outputs(model, x):
    dead = {i: torch.arange(0, n, 2) for i, n in NP.widths(model).items()}
    zeroed = kill_outgoing(model, dead)
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
    # Float sums depend on the kernel's order of summation, which changes with the width of the layer
    # (29 inputs instead of 32) and with load. On dyadic values (multiples of 1/16, float64) every
    # partial sum is exactly representable, so any order gives the same bits: equality is exact.
    torch.manual_seed(1)
    m = MLP(64, (32, 16)).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.round(p * 64) / 16)
    x = torch.randint(0, 17, (8, 64), dtype=torch.float64) / 16
    dead = {1: torch.tensor([3, 7, 8]), 3: torch.tensor([0, 15])}
    zeroed = kill_outgoing(m, dead)
    keep = {i: torch.tensor([j for j in range(n) if j not in dead[i]]) for i, n in NP.widths(m).items()}
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


def test_count_macs_known():
    assert NP.count_macs(MLP(784, (300, 100)), torch.zeros(1, 784)) == 784 * 300 + 300 * 100 + 100 * 10
    int8 = torch.ao.quantization.quantize_dynamic(MLP(784, (300, 100)), {nn.Linear}, dtype=torch.qint8)
    assert NP.count_macs(int8, torch.zeros(1, 784)) == 784 * 300 + 300 * 100 + 100 * 10  # int8 counts too
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 1))
    assert NP.count_macs(conv, torch.zeros(1, 1, 6, 6)) == 2 * 9 * 16 + 32


def test_layer_times_one_row_per_layer():
    m = LeNet5((1, 8, 8)).eval()
    t = NP.layer_times(m, torch.rand(4, 1, 8, 8), repeats=3)
    assert list(t.index) == [f"{i} {type(x).__name__}" for i, x in enumerate(m)] and (t > 0).all()
