"""Unit tests of nbhelpers.schedules: each schedule's learning rates step by step, names, range test.

Constant, step, exponential and plateau are compared with ``==``: torch multiplies ``group["lr"]`` by
the factor exactly as the hand-written loops here do. Cosine and one-cycle are compared with their
closed-form formulas to 1e-12 relative: torch evaluates cosine annealing recursively (a ratio of
cosines times the previous rate), which differs from the closed form in the last bits of a double.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nbhelpers import schedules as S
from nbhelpers.params import ParameterError
from nbhelpers.train import fit

EPOCHS, STEPS, LR = 4, 3, 0.1


def seq(name: str, metrics=None, epochs: int = EPOCHS, steps: int = STEPS, **kw) -> list[float]:
    """The learning rate of every step of a named schedule."""
    return S.lr_sequence(S.make_schedule(name, epochs, steps, LR, **kw), epochs, steps, LR, metrics)


def per_epoch(values: list[float], steps: int = STEPS) -> list[float]:
    """Repeat one value per epoch for every step of that epoch."""
    return [v for v in values for _ in range(steps)]


def test_names_and_step_units():
    assert set(S.SCHEDULE_NAMES) == set(S.STEP_UNIT) == set(S.CLASSES)
    for name in S.SCHEDULE_NAMES:
        sched = S.make_schedule(name, EPOCHS, STEPS, LR)
        assert sched["scheduler_step"] == S.STEP_UNIT[name]
    assert S.STEP_UNIT["onecycle"] == S.STEP_UNIT["cosine_warmup"] == "batch"


def test_constant():
    assert seq("constant") == [LR] * (EPOCHS * STEPS)


def test_step():
    assert seq("step", step_size=2, gamma=0.5) == per_epoch([LR, LR, LR * 0.5, LR * 0.5])


def test_exponential_is_lr_times_gamma():
    lr, expected = LR, []
    for _ in range(EPOCHS):
        expected.append(lr)
        lr *= 0.8
    assert seq("exponential", exp_gamma=0.8) == per_epoch(expected)


def test_cosine_with_warmup():
    warm = 1 * STEPS
    total = EPOCHS * STEPS
    expected = [LR * (0.1 + 0.9 * t / warm) for t in range(warm)]
    expected += [LR / 2 * (1 + math.cos(math.pi * (t - warm) / (total - warm))) for t in range(warm, total)]
    got = seq("cosine_warmup", warmup_epochs=1)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert got[warm] == LR  # the warm-up hands over at exactly the base rate


def test_cosine_without_warmup():
    total = EPOCHS * STEPS
    expected = [LR / 2 * (1 + math.cos(math.pi * t / total)) for t in range(total)]
    assert seq("cosine_warmup", warmup_epochs=0) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_onecycle():
    peak, pct, total = 0.4, 0.25, EPOCHS * STEPS
    start, end = peak / 25, peak / 25 / 1e4
    up = pct * total - 1  # torch: the rise ends at step pct * total - 1

    def cos(a, b, frac):
        return b + (a - b) / 2 * (1 + math.cos(math.pi * frac))

    expected = [cos(start, peak, t / up) if t <= up else cos(peak, end, (t - up) / (total - 1 - up))
                for t in range(total)]
    got = seq("onecycle", max_lr=peak, pct_start=pct)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert max(got) == pytest.approx(peak) and got[-1] == pytest.approx(end)


def test_plateau_on_validation_loss():
    losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95]
    got = seq("plateau", metrics=losses, epochs=6, plateau_factor=0.5, plateau_patience=1)
    # best 0.9 after epoch 2; epochs 3 and 4 do not improve -> halve after epoch 4; again after epoch 6
    assert got == per_epoch([LR, LR, LR, LR, LR * 0.5, LR * 0.5])


def test_plateau_needs_metrics():
    with pytest.raises(ParameterError, match="metrics"):
        seq("plateau")


@pytest.mark.parametrize("bad", ["cosine", "Constant", "", None])
def test_unknown_name_raises(bad):
    with pytest.raises(ParameterError, match="schedule"):
        S.make_schedule(bad, EPOCHS, STEPS, LR)


@pytest.mark.parametrize("values", [[], "constant", ["constant", "bogus"], ["step", "step"], None])
def test_check_schedules_rejects(values):
    with pytest.raises(ParameterError, match="SCHEDULES"):
        S.check_schedules("SCHEDULES", values)


def test_check_schedules_accepts():
    assert S.check_schedules("SCHEDULES", ("onecycle", "constant")) == ["onecycle", "constant"]


@pytest.mark.parametrize("kw,name", [({"epochs": 0}, "epochs"), ({"base_lr": 0.0}, "base_lr"),
                                     ({"base_lr": -1.0}, "base_lr")])
def test_bad_budget_or_rate(kw, name):
    args = {"epochs": EPOCHS, "steps_per_epoch": STEPS, "base_lr": LR, **kw}
    with pytest.raises(ParameterError, match=name):
        S.make_schedule("constant", **args)


def test_warmup_longer_than_training():
    with pytest.raises(ParameterError, match="WARMUP_EPOCHS"):
        S.check_warmup("WARMUP_EPOCHS", 4, 4)
    with pytest.raises(ParameterError, match="warmup_epochs"):
        S.make_schedule("cosine_warmup", 3, STEPS, LR, warmup_epochs=5)
    assert S.check_warmup("WARMUP_EPOCHS", 3, 4) == 3


def _toy():
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = (x[:, 0] > 0).long()
    return nn.Sequential(nn.Linear(5, 2)), DataLoader(TensorDataset(x, y), batch_size=16)


@pytest.mark.parametrize("name", ["step", "exponential", "cosine_warmup", "onecycle"])
def test_trace_matches_fit(name):
    """The rates fit logs at the start of each epoch are those of the traced sequence."""
    model, dl = _toy()
    kw = {"step_size": 1, "gamma": 0.5, "warmup_epochs": 1, "max_lr": 0.3}
    sched = S.make_schedule(name, 3, len(dl), LR, **kw)
    hist = fit(model, dl, epochs=3, lr=LR, optimizer="sgd", progress=False, **sched)
    assert hist["lr"].tolist() == S.lr_sequence(sched, 3, len(dl), LR)[:: len(dl)]


def test_range_test_and_suggestion():
    model, dl = _toy()
    before = [p.clone() for p in model.parameters()]
    df = S.lr_range_test(model, dl, lr_min=1e-3, lr_max=1.0, steps=10, stop_factor=1e9)
    assert list(df.columns) == ["step", "lr", "loss", "smoothed_loss"] and len(df) == 10
    assert df["lr"].iloc[0] == 1e-3 and df["lr"].iloc[-1] == pytest.approx(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the model is left as it was
    fake = pd.DataFrame({"lr": [0.01, 0.1, 1.0, 10.0], "loss": 0.0, "smoothed_loss": [2.0, 1.0, 0.5, 3.0]})
    s = S.suggest_max_lr(fake, divisor=4.0)
    assert s["lr_min_loss"] == 1.0 and s["max_lr"] == 0.25



@pytest.mark.parametrize("override,name", [
    ({"SCHEDULES": ["constant", "cosine"]}, "SCHEDULES"),
    ({"SCHEDULES": []}, "SCHEDULES"),
    ({"EPOCHS": 0}, "EPOCHS"),
    ({"BASE_LR": 0.0}, "BASE_LR"),
    ({"BASE_LR": -0.1}, "BASE_LR"),
    ({"EPOCHS": 3, "WARMUP_EPOCHS": 4}, "WARMUP_EPOCHS"),
])
def test_notebook_bad_input(override, name, tmp_path):
    """Bad input stops notebook 09 in its validation cell, before any training, naming the parameter."""
    from pathlib import Path

    from notebook_runner import assert_fails_in_validation

    nb = Path(__file__).resolve().parents[1] / "notebooks" / "09_learning_rate_schedules.ipynb"
    assert_fails_in_validation(nb, tmp_path, name, **override)
