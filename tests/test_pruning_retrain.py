"""Unit tests of nbhelpers.techniques.pruning.retrain: Han et al.'s (2015) L2 term, dropout scaled
to the kept connections, and per-layer sparsities in fixed proportions (their Table 2)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nbhelpers.core.models import MLP, LeNet5
from nbhelpers.core.params import ParameterError
from nbhelpers.techniques import pruning as P


def mlp() -> nn.Module:
    """A small MLP with random weights (64-32-16-10)."""
    torch.manual_seed(0)
    return MLP(64, (32, 16))


def test_scaled_dropout_rate_is_han_equation_2():
    # D_r = D_o sqrt(C_ir / C_io): a quarter of the connections left halves the rate
    assert P.scaled_dropout_rate(0.5, 25, 100) == 0.25
    assert P.scaled_dropout_rate(0.5, 100, 100) == 0.5
    assert P.scaled_dropout_rate(0.5, 0, 100) == 0.0
    assert P.scaled_dropout_rate(0.0, 7, 100) == 0.0
    # LeNet-300-100's first layer at Table 2's 8%: 0.5 sqrt(0.08) = 0.1414...
    assert P.scaled_dropout_rate(0.5, 18816, 235200) == pytest.approx(0.5 * math.sqrt(0.08), 1e-15)


@pytest.mark.parametrize(
    "args", [(1.0, 1, 2), (-0.1, 1, 2), (0.5, 3, 2), (0.5, -1, 2), (0.5, 1, 0), (0.5, 1.5, 2)]
)
def test_scaled_dropout_rate_refuses_bad_input(args):
    with pytest.raises(ParameterError):
        P.scaled_dropout_rate(*args)


def test_l2_penalty_value_and_gradient():
    model = mlp()
    lam = 0.01
    weights = [m.weight for _, m in P.prunable(model)]
    expected = 0.5 * lam * sum(float((w.detach().double() ** 2).sum()) for w in weights)
    penalty = P.l2_penalty(model, lam)
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-6)
    penalty.backward()
    for w in weights:  # d/dW (lam/2)||W||^2 = lam W: Caffe's weight_decay
        assert torch.allclose(w.grad, lam * w.detach(), rtol=0, atol=1e-9)
    for _, m in P.prunable(model):  # biases are not penalized
        assert m.bias.grad is None


def test_l2_penalty_ignores_pruned_weights():
    model = P.magnitude_prune(mlp(), 0.75, "global")
    penalty = P.l2_penalty(model, 1.0)
    by_hand = 0.5 * sum(
        float((m.weight_orig * m.weight_mask).detach().pow(2).sum()) for _, m in P.prunable(model)
    )
    assert float(penalty.detach()) == pytest.approx(by_hand, rel=1e-6)
    penalty.backward()
    for _, m in P.prunable(model):  # the gradient reaches weight_orig only where the mask is 1
        assert float(m.weight_orig.grad[m.weight_mask == 0].abs().max()) == 0.0
    with pytest.raises(ParameterError):
        P.l2_penalty(model, -1.0)


def test_hidden_activations_pair_each_hidden_linear_with_its_activation():
    pairs = P.hidden_activations(MLP(64, (32, 16)))
    # Flatten, Linear 1, ReLU 2, Linear 3, ReLU 4, Linear 5
    assert [n for n, _ in pairs] == ["1", "3"]
    assert all(isinstance(a, nn.ReLU) for _, a in pairs)
    sig = P.hidden_activations(MLP(64, (8, 8, 8), activation="sigmoid"))
    assert [n for n, _ in sig] == ["1", "3", "5"]
    # Caffe's LeNet-5: the convolutions have no activation; fc 500 has its ReLU, the classifier none
    caffe = LeNet5((1, 28, 28), channels=(20, 50), fc=(500,), caffe=True)
    assert [n for n, _ in P.hidden_activations(caffe)] == ["5"]


def test_scaled_dropout_rates_follow_the_masks_and_update():
    model = mlp()
    with P.ScaledDropout(model, 0.5) as drop:
        assert drop.rates == {"1": 0.5, "3": 0.5}  # dense: D_r = D_o
        P.magnitude_prune(model, 0.75, "layer")  # a quarter of each layer left
        assert drop.update() == {"1": 0.25, "3": 0.25}
    assert drop.handles == []


def test_scaled_dropout_matches_inverted_dropout_and_only_in_training():
    model = mlp()
    x = torch.randn(512, 64)
    clean = model.eval()(x)
    with P.ScaledDropout(model, 0.5, seed=3) as drop:
        assert torch.equal(model.eval()(x), clean)  # evaluation: no dropout
        model.train()
        hidden = {}
        model[2].register_forward_hook(lambda m, i, o: hidden.setdefault("relu", o))
        a = model(x)
        b = model(x)
        assert not torch.equal(a, b)  # fresh masks at every pass
        out = hidden["relu"]
        relu = torch.relu(model[1](x))
        kept = out != 0
        # survivors are scaled by 1 / (1 - p); about half of the active units are dropped
        assert torch.allclose(out[kept], relu[kept] * 2.0)
        share = float(kept.sum()) / float((relu != 0).sum())
        assert 0.45 < share < 0.55
        assert drop.rates["1"] == 0.5


def test_scaled_dropout_masks_ignore_the_global_generator():
    def two_passes(draw_between: bool) -> torch.Tensor:
        model = mlp().train()
        x = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
        with P.ScaledDropout(model, 0.3, seed=7):
            model(x)
            if draw_between:
                torch.rand(5)  # e.g. a DataLoader's seed draw during a validation pass
            return model(x)

    assert torch.equal(two_passes(False), two_passes(True))


def test_scaled_dropout_refuses_bad_input():
    with pytest.raises(ParameterError):
        P.ScaledDropout(mlp(), 1.0)
    with pytest.raises(ValueError):
        P.ScaledDropout(nn.Sequential(nn.Linear(4, 2)), 0.5)


def test_proportional_sparsities_reproduce_han_table_2():
    lenet = MLP(784, (300, 100))  # LeNet-300-100: 235,200 + 30,000 + 1,000 weights
    keep = [0.08, 0.09, 0.26]
    kept = 0.08 * 235200 + 0.09 * 30000 + 0.26 * 1000  # 21,776 weights
    s = P.proportional_sparsities(lenet, 1 - kept / 266200, keep)
    assert s == pytest.approx({"1": 0.92, "3": 0.91, "5": 0.74}, abs=1e-12)
    P.prune_layers(lenet, s)
    nz = P.layer_sparsity(lenet)["nonzero"].to_dict()
    assert nz == {"1": 18816, "3": 2700, "5": 260, "total": 21776}


def test_proportional_sparsities_clip_at_dense_and_hit_the_total():
    lenet = MLP(784, (300, 100))
    s = P.proportional_sparsities(lenet, 0.5, [0.08, 0.09, 0.26])
    assert s["5"] == 0.0  # the classifier's share would exceed 1: kept whole
    kept = sum((1 - s[n]) * m.weight.numel() for n, m in P.prunable(lenet))
    assert kept == pytest.approx(0.5 * 266200, rel=1e-12)
    assert s["1"] / s["3"] != 1.0
    assert (1 - s["1"]) / (1 - s["3"]) == pytest.approx(0.08 / 0.09, rel=1e-12)


@pytest.mark.parametrize("keep", [[0.08, 0.09], [0.0, 0.1, 0.2], [0.1, 0.2, 1.5], [0.1, True, 0.2]])
def test_proportional_sparsities_refuse_bad_tables(keep):
    with pytest.raises(ParameterError):
        P.proportional_sparsities(MLP(784, (300, 100)), 0.9, keep)


def test_prune_scope_dispatches_and_checks_the_table():
    lenet = MLP(784, (300, 100))
    keep = [0.08, 0.09, 0.26]
    P.prune_scope(lenet, 1 - 21776 / 266200, "table", keep)
    assert P.layer_sparsity(lenet)["nonzero"].to_dict()["total"] == 21776
    a, b = mlp(), mlp()
    P.prune_scope(a, 0.5, "global")
    P.magnitude_prune(b, 0.5, "global")
    assert all(torch.equal(x, y) for x, y in zip(P.masks(a).values(), P.masks(b).values()))
    with pytest.raises(ParameterError):
        P.prune_scope(mlp(), 0.5, "table")  # no table given
    with pytest.raises(ParameterError):
        P.prune_scope(mlp(), 0.5, "rows")
    assert P.check_run("SWEEP_RUNS", "iterative/table", P.RUN_SCOPES) == ("iterative", "table")
    with pytest.raises(ParameterError, match="'table'"):
        P.check_run("SWEEP_RUNS", "iterative/rows", P.RUN_SCOPES)
    with pytest.raises(ParameterError):
        P.check_run("SWEEP_RUNS", "iterative/table")  # the default scopes have no table


def test_dropout_rates_follow_each_hidden_layer():
    model = P.prune_layers(mlp(), {"1": 0.75, "3": 0.9375, "5": 0.5})
    # layer 1 keeps 512 of 2,048 weights, layer 3 32 of 512: 0.5 sqrt(1/4), 0.5 sqrt(1/16); the
    # classifier has no dropout after it
    assert P.dropout_rates(model, 0.5) == {"1": 0.25, "3": 0.125}


def test_kept_shares_set_a_model_beside_the_table():
    lenet = P.prune_scope(MLP(784, (300, 100)), 0.9, "global")
    shares = P.kept_shares(P.layer_sparsity(lenet), [0.08, 0.09, 0.26])
    assert list(shares.index) == ["1", "3", "5", "total"]
    assert shares.loc["total", "kept share, this model"] == pytest.approx(0.1, abs=1e-12)
    assert shares.loc["total", "kept share, table"] == pytest.approx(21776 / 266200, abs=1e-12)
    assert "kept share, table" not in P.kept_shares(P.layer_sparsity(lenet), [])


@pytest.mark.parametrize(
    "override, name",
    [
        ({"FINETUNE_L2": -0.1}, "FINETUNE_L2"),
        ({"FINETUNE_DROPOUT": 1.0}, "FINETUNE_DROPOUT"),
        ({"LAYER_KEEP": [0.08, 0.0, 0.26]}, "LAYER_KEEP"),
        ({"LAYER_KEEP": [0.08, 0.09], "SWEEP_RUNS": ["iterative/table"]}, "LAYER_KEEP"),
        ({"SWEEP_RUNS": ["iterative/rows"]}, "SWEEP_RUNS"),
    ],
)
def test_notebook_04_bad_retraining_input_fails_in_validation(override, name, tmp_path):
    """Bad retraining parameters stop notebook 04 in its validation cell, before any training."""
    from pathlib import Path

    from notebook_runner import assert_fails_in_validation

    nb = Path(__file__).resolve().parents[1] / "notebooks" / "04_weight_pruning.ipynb"
    assert_fails_in_validation(nb, tmp_path, name, **override)
