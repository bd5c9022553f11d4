"""Unit tests of nbhelpers.techniques.normalization.figure1: Ioffe and Szegedy's Figure 1(a)
network at the paper's settings, test accuracy every few steps, and where one curve stops being
above the other."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from nbhelpers.core.models import build_model
from nbhelpers.core.params import ParameterError
from nbhelpers.core.train import fit, seed_everything
from nbhelpers.techniques import normalization as N


def test_binarize_cuts_at_the_threshold():
    x = torch.tensor([0.0, 0.5, 0.5001, 1.0])
    assert torch.equal(N.Binarize(0.5)(x), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert N.Binarize(0.5)(x.double()).dtype == torch.float64
    with pytest.raises(ParameterError):
        N.Binarize(1.0)


def test_gaussian_init_draws_small_weights_and_zero_biases():
    torch.manual_seed(0)
    model = N.gaussian_init(nn.Sequential(nn.Linear(784, 300), nn.Linear(300, 100)), 0.01)
    w = torch.cat([m.weight.detach().flatten() for m in model])
    assert abs(float(w.mean())) < 1e-4  # 265,200 draws: the mean's sd is 2e-5
    assert float(w.std()) == pytest.approx(0.01, rel=0.01)
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in model)
    with pytest.raises(ParameterError):
        N.gaussian_init(model, 0.0)


def test_sigmoid_net_default_is_the_shared_family_and_paper_adds_binary_gaussian():
    seed_everything(0)
    ours = N.sigmoid_net((1, 28, 28), batchnorm=True)
    seed_everything(0)
    shared = build_model("mlp", (1, 28, 28), batchnorm=True, activation="sigmoid",
                         hidden=(100, 100, 100))  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(),
                                                 shared.state_dict().values()))  # fmt: skip
    paper = N.sigmoid_net((1, 28, 28), batchnorm=False, paper_std=0.01)
    assert isinstance(paper[0], N.Binarize)
    linears = [m for m in paper if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [100, 100, 100, 10]
    assert sum(isinstance(m, nn.Sigmoid) for m in paper) == 3
    assert all(float(m.weight.detach().std()) < 0.02 for m in linears)
    x = torch.rand(4, 1, 28, 28)  # gray and its binary version give the same outputs
    assert torch.equal(paper(x), paper((x > 0.5).float()))


def test_step_accuracy_scores_every_k_steps_without_changing_the_run():
    torch.manual_seed(0)
    x, y = torch.randn(240, 8), torch.randint(0, 3, (240,))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=30)

    def run(hook):
        seed_everything(1)
        model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Sigmoid(), nn.Linear(16, 3))
        fit(model, data, epochs=2, lr=0.1, optimizer="sgd", after_step=hook, progress=False)
        return model

    curve = N.StepAccuracy(x, y, every=8, batch=100)
    with_hook, without = run(curve), run(None)
    for a, b in zip(with_hook.state_dict().values(), without.state_dict().values()):
        assert torch.equal(a, b)  # scoring in eval mode leaves weights and BN statistics alone
    frame = curve.frame()
    assert list(frame.columns) == ["step", "accuracy"]
    assert list(frame["step"]) == [8, 16]  # 2 epochs of 8 steps
    with torch.no_grad():  # the scoring after the last step is the trained model's accuracy
        acc = int((without.eval()(x).argmax(1) == y).sum()) / len(y)
    assert frame["accuracy"].iloc[-1] == acc
    assert list(N.StepAccuracy(x, y, every=3).frame()["step"]) == []
    assert with_hook.training  # handed back in training mode
    with pytest.raises(ParameterError):
        N.StepAccuracy(x, y[:-1], every=3)
    with pytest.raises(ParameterError):
        N.StepAccuracy(x, y, every=0)


def test_first_not_above_and_above_share():
    steps = [100, 200, 300, 400]
    assert N.first_not_above(
        steps, [0.5, 0.6, 0.7, 0.8], [0.4, 0.5, 0.6, 0.7]
    ) != N.first_not_above(steps, [0.5, 0.6, 0.7, 0.8], [0.4, 0.5, 0.6, 0.7])  # NaN != NaN
    assert math.isnan(N.first_not_above(steps, [0.5, 0.6, 0.7, 0.8], [0.4, 0.5, 0.6, 0.7]))
    assert N.first_not_above(steps, [0.5, 0.6, 0.7, 0.8], [0.4, 0.6, 0.8, 0.7]) == 200.0  # a tie
    assert N.above_share([0.5, 0.6, 0.7, 0.8], [0.4, 0.6, 0.8, 0.7]) == 0.5
    with pytest.raises(ParameterError):
        N.first_not_above(steps, [0.5, 0.6], [0.4, 0.5])
    with pytest.raises(ParameterError):
        N.first_not_above([100, 100, 300, 400], [1, 1, 1, 1], [0, 0, 0, 0])
    with pytest.raises(ParameterError):
        N.above_share([], [])
    assert np.isclose(N.above_share([1.0], [0.0]), 1.0)


def _curve(values: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"step": [100, 200, 300], "accuracy": values})


def test_step_curves_and_compare_curves():
    runs = [
        {"bn": False, "lr": 0.5, "seed": 0, "test_curve": _curve([0.5, 0.7, 0.80])},
        {"bn": False, "lr": 0.5, "seed": 1, "test_curve": _curve([0.5, 0.7, 0.90])},
        {"bn": True, "lr": 0.5, "seed": 0, "test_curve": _curve([0.6, 0.8, 0.80])},
        {"bn": True, "lr": 0.5, "seed": 1, "test_curve": _curve([0.6, 0.8, 0.95])},
        {"bn": True, "lr": 2.5, "seed": 0, "test_curve": _curve([0.1, 0.1, 0.1])},
        {"bn": False, "lr": 2.5, "seed": 0, "test_curve": None},  # no curve: skipped
    ]
    curves = N.step_curves(runs)
    assert list(curves.columns) == ["bn", "lr", "seed", "step", "accuracy"]
    assert len(curves) == 15
    c = N.compare_curves(curves, 0.5)
    # means: no BN 0.5, 0.7, 0.85; BN 0.6, 0.8, 0.875: above at every step
    assert c["share_above"] == 1.0 and math.isnan(c["first_step_not_above"])
    assert c["mean"][300] == pytest.approx({"no BN": 0.85, "BN": 0.875})
    # seed 0 ties at step 300: not above there; seed 1 is above throughout
    assert c["seed_first_not_above"][0] == 300.0 and math.isnan(c["seed_first_not_above"][1])
    assert (c["points"], c["last_step"]) == (3, 300)
    assert c["smallest_gap_points"] == pytest.approx(2.5) and c["smallest_gap_step"] == 300
    assert (c["bn_last"], c["no_bn_last"]) == pytest.approx((0.875, 0.85))
    with pytest.raises(ParameterError):
        N.compare_curves(curves, 2.5)  # no no-BN curve at that rate
    assert N.step_curves([]).empty


@pytest.mark.parametrize(
    "override, name",
    [
        ({"SIG_PAPER_STD": -0.01}, "SIG_PAPER_STD"),
        ({"SIG_EVAL_EVERY": 0}, "SIG_EVAL_EVERY"),
        ({"BASELINE_EPOCHS": [15]}, "BASELINE_EPOCHS"),
        ({"BASELINE_EPOCHS": [15, 0]}, "BASELINE_EPOCHS"),
    ],
)
def test_notebook_08_bad_figure1_input_fails_in_validation(override, name, tmp_path):
    """Bad Figure 1 parameters stop notebook 08 in its validation cell, before any training."""
    from pathlib import Path

    from notebook_runner import assert_fails_in_validation

    nb = Path(__file__).resolve().parents[1] / "notebooks" / "08_batch_normalization.ipynb"
    assert_fails_in_validation(nb, tmp_path, name, **override)
