"""Unit tests of nbhelpers.techniques.schedules (each schedule's learning rates step by step,
names, range test) and of notebook 09's lesson tables and facts (nbhelpers.lessons.lr_schedules).

Constant, step, exponential and plateau are compared with ``==``: torch multiplies ``group["lr"]``
by the factor exactly as the hand-written loops here do. Cosine and one-cycle are compared with
their closed-form formulas to 1e-12 relative: torch evaluates cosine annealing recursively (a ratio
of cosines times the previous rate), which differs from the closed form in the last bits of a
double."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nbhelpers.core.params import ParameterError
from nbhelpers.core.train import fit
from nbhelpers.lessons import lr_schedules as lesson
from nbhelpers.techniques import schedules

EPOCHS, STEPS, LR = 4, 3, 0.1


def seq(name: str, metrics=None, epochs: int = EPOCHS, steps: int = STEPS, **kw) -> list[float]:
    """The learning rate of every step of a named schedule."""
    return schedules.lr_sequence(
        schedules.make_schedule(name, epochs, steps, LR, **kw), epochs, steps, LR, metrics
    )


def per_epoch(values: list[float], steps: int = STEPS) -> list[float]:
    """Repeat one value per epoch for every step of that epoch."""
    return [v for v in values for _ in range(steps)]


def test_names_and_step_units():
    assert set(schedules.SCHEDULE_NAMES) == set(schedules.STEP_UNIT) == set(schedules.CLASSES)
    for name in schedules.SCHEDULE_NAMES:
        sched = schedules.make_schedule(name, EPOCHS, STEPS, LR)
        assert sched["scheduler_step"] == schedules.STEP_UNIT[name]
    assert schedules.STEP_UNIT["onecycle"] == schedules.STEP_UNIT["cosine_warmup"] == "batch"


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
    expected += [
        LR / 2 * (1 + math.cos(math.pi * (t - warm) / (total - warm))) for t in range(warm, total)
    ]
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

    expected = [
        cos(start, peak, t / up) if t <= up else cos(peak, end, (t - up) / (total - 1 - up))
        for t in range(total)
    ]
    got = seq("onecycle", max_lr=peak, pct_start=pct)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert max(got) == pytest.approx(peak) and got[-1] == pytest.approx(end)


def test_plateau_on_validation_loss():
    losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95]
    got = seq("plateau", metrics=losses, epochs=6, plateau_factor=0.5, plateau_patience=1)
    # best 0.9 after epoch 2; epochs 3 and 4 do not improve -> halve after epoch 4; again after
    # epoch 6
    assert got == per_epoch([LR, LR, LR, LR, LR * 0.5, LR * 0.5])


def test_plateau_needs_metrics():
    with pytest.raises(ParameterError, match="metrics"):
        seq("plateau")


@pytest.mark.parametrize("bad", ["cosine", "Constant", "", None])
def test_unknown_name_raises(bad):
    with pytest.raises(ParameterError, match="schedule"):
        schedules.make_schedule(bad, EPOCHS, STEPS, LR)


@pytest.mark.parametrize("values", [[], "constant", ["constant", "bogus"], ["step", "step"], None])
def test_check_schedules_rejects(values):
    with pytest.raises(ParameterError, match="SCHEDULES"):
        schedules.check_schedules("SCHEDULES", values)


def test_check_schedules_accepts():
    assert schedules.check_schedules("SCHEDULES", ("onecycle", "constant")) == [
        "onecycle",
        "constant",
    ]


@pytest.mark.parametrize(
    "kw,name",
    [({"epochs": 0}, "epochs"), ({"base_lr": 0.0}, "base_lr"), ({"base_lr": -1.0}, "base_lr")],
)
def test_bad_budget_or_rate(kw, name):
    args = {"epochs": EPOCHS, "steps_per_epoch": STEPS, "base_lr": LR, **kw}
    with pytest.raises(ParameterError, match=name):
        schedules.make_schedule("constant", **args)


def test_warmup_longer_than_training():
    with pytest.raises(ParameterError, match="WARMUP_EPOCHS"):
        schedules.check_warmup("WARMUP_EPOCHS", 4, 4)
    with pytest.raises(ParameterError, match="warmup_epochs"):
        schedules.make_schedule("cosine_warmup", 3, STEPS, LR, warmup_epochs=5)
    assert schedules.check_warmup("WARMUP_EPOCHS", 3, 4) == 3


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
    sched = schedules.make_schedule(name, 3, len(dl), LR, **kw)
    hist = fit(model, dl, epochs=3, lr=LR, optimizer="sgd", progress=False, **sched)
    assert hist["lr"].tolist() == schedules.lr_sequence(sched, 3, len(dl), LR)[:: len(dl)]


def test_range_test_and_suggestion():
    model, dl = _toy()
    before = [p.clone() for p in model.parameters()]
    df = schedules.lr_range_test(model, dl, lr_min=1e-3, lr_max=1.0, steps=10, stop_factor=1e9)
    assert list(df.columns) == ["step", "lr", "loss", "smoothed_loss"] and len(df) == 10
    assert df["lr"].iloc[0] == 1e-3 and df["lr"].iloc[-1] == pytest.approx(1.0)
    assert all(
        torch.equal(a, b) for a, b in zip(before, model.parameters())
    )  # the model is left as it was
    fake = pd.DataFrame(
        {"lr": [0.01, 0.1, 1.0, 10.0], "loss": 0.0, "smoothed_loss": [2.0, 1.0, 0.5, 3.0]}
    )
    s = schedules.suggest_max_lr(fake, divisor=4.0)
    assert s["lr_min_loss"] == 1.0 and s["max_lr"] == 0.25


# --- the tables of notebook 09 ---------------------------------------------------------------


def _history(val_acc: float, lr: float, loss: float, acc: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "val_accuracy": [0.5, val_acc],
            "lr": [0.1, lr],
            "train_loss": [1.0, loss],
            "train_accuracy": [0.6, acc],
            "epoch_seconds": [1.5, 2.5],
            "val_loss": [0.9, 0.8],
        }
    )


def test_final_epoch_takes_the_last_row_and_sums_time():
    assert lesson.final_epoch(_history(0.9, 0.01, 0.05, 0.99)) == {
        "val_accuracy": 0.9,
        "final_lr": 0.01,
        "train_loss": 0.05,
        "train_accuracy": 0.99,
        "train_seconds": 4.0,
    }


def _results() -> pd.DataFrame:
    """Two seeds of three schedules with known accuracies (test size 1,000: one error 0.1 point)."""
    acc = {"constant": (0.90, 0.92), "onecycle": (0.94, 0.95), "step": (0.91, 0.91)}
    val = {"constant": 0.90, "onecycle": 0.93, "step": 0.95}  # step best on validation
    rows = [
        {
            "schedule": n,
            "seed": s,
            "epochs": 4,
            "test_accuracy": a[s],
            **lesson.final_epoch(_history(val[n], 0.01, 0.01 * (i + 1), 0.99 - 0.01 * i)),
        }
        for i, (n, a) in enumerate(acc.items())
        for s in (0, 1)
    ]
    return pd.DataFrame(rows)


def test_per_schedule_means_and_gain():
    t = lesson.per_schedule(_results())
    assert list(t.index) == ["constant", "onecycle", "step"]
    assert t.loc["onecycle", "test_mean"] == pytest.approx(0.945)
    assert t.loc["constant", "test_sd"] == pytest.approx(0.02 / math.sqrt(2))
    assert t.loc["onecycle", "gain_vs_constant_points"] == pytest.approx(3.5)
    assert t.loc["constant", "gain_vs_constant_points"] == 0.0
    assert t.loc["step", "train_seconds"] == 4.0


def test_summary_facts_follow_the_tables():
    table = lesson.per_schedule(_results())
    half = pd.DataFrame(
        {
            "schedule": ["onecycle", "onecycle", "constant", "constant"],
            "seed": [0, 1, 0, 1],
            "epochs": 2,
            "test_accuracy": [0.90, 0.91, 0.85, 0.86],
        }
    )
    sweep = pd.DataFrame({"mean": [0.91, 0.93, 0.89]}, index=pd.Index([0.05, 0.1, 0.4], name="lr"))
    traces = {
        "constant": [0.05] * 8,
        "onecycle": [0.016, 0.1, 0.4, 0.3, 0.2, 0.1, 0.01, 0.0],
        "plateau": [0.05] * 6 + [0.005] * 2,
    }
    suggestion = {"lr_min_loss": 0.8, "max_lr": 0.4}
    f = lesson.summary(
        table,
        "onecycle",
        half,
        sweep,
        suggestion,
        traces,
        steps_per_epoch=2,
        base_lr=0.05,
        test_size=1000,
        target_points=1.0,
    )
    v = f["value"]
    assert list(f.columns) == ["value", "unit", "context"] and f.index.is_unique
    assert f["context"].str.len().max() <= 50  # pandas shows 50 characters of a cell
    assert v["best schedule on validation"] == "onecycle"
    assert v["gain over constant at equal budget"] == pytest.approx(3.5)
    assert v["equal-budget target met"] is True
    assert v["best at half budget minus constant at full"] == pytest.approx(100 * (0.905 - 0.91))
    assert v["half-budget target met"] is False
    assert v["gain beyond the seed spread"] is True  # 3.5 points > sds of 0.7 and 1.4 points
    assert v["one test error"] == pytest.approx(0.1)
    assert v["one-cycle peak / BASE_LR"] == pytest.approx(8.0)
    assert v["constant at the peak minus constant at BASE_LR"] == pytest.approx(-2.0)
    assert v["best constant LR tried"] == 0.1
    assert v["best minus the best constant"] == pytest.approx(1.5)
    assert v["lowest final training accuracy"] == pytest.approx(97.0)
    assert v["mean LR of onecycle / BASE_LR"] == pytest.approx(
        np.mean(traces["onecycle"]) / 0.05, rel=1e-3
    )
    assert v["plateau: epochs before the first cut"] == 3
    assert "mean LR of exponential / BASE_LR" not in f.index  # only schedules that ran


def test_summary_without_the_peak_in_the_sweep_says_nan():
    table = lesson.per_schedule(_results())
    half = pd.DataFrame(columns=["schedule", "seed", "epochs", "test_accuracy"])
    sweep = pd.DataFrame({"mean": [0.91]}, index=pd.Index([0.05], name="lr"))
    f = lesson.summary(
        table,
        "step",
        half,
        sweep,
        {"lr_min_loss": 0.8, "max_lr": 0.4},
        {},
        steps_per_epoch=2,
        base_lr=0.05,
        test_size=1000,
    )
    assert math.isnan(f.loc["constant at the peak minus constant at BASE_LR", "value"])
    assert math.isnan(f.loc["best at half budget minus constant at full", "value"])
    assert f.loc["half-budget target met", "value"] is False


def test_plot_learning_curves_zooms_and_moves_the_legend():
    h = pd.DataFrame(
        {
            "epoch": [1, 2],
            "train_loss": [1.0, 0.5],
            "val_loss": [1.1, 0.6],
            "train_accuracy": [0.9, 0.95],
            "val_accuracy": [0.88, 0.93],
        }
    )
    fig = lesson.plot_learning_curves({"constant": h, "onecycle": h}, accuracy_floor=0.8)
    assert fig.axes[0].get_yscale() == "log" and fig.axes[1].get_ylim()[0] == 0.8
    assert fig.axes[0].get_legend() is None and fig.axes[1].get_legend() is not None


@pytest.mark.parametrize(
    "override,name",
    [
        ({"SCHEDULES": ["constant", "cosine"]}, "SCHEDULES"),
        ({"SCHEDULES": []}, "SCHEDULES"),
        ({"EPOCHS": 0}, "EPOCHS"),
        ({"BASE_LR": 0.0}, "BASE_LR"),
        ({"BASE_LR": -0.1}, "BASE_LR"),
        ({"EPOCHS": 3, "WARMUP_EPOCHS": 4}, "WARMUP_EPOCHS"),
    ],
)
def test_notebook_bad_input(override, name, tmp_path):
    """Bad input stops notebook 09 in its validation cell, before any training, naming the
    parameter."""
    from pathlib import Path

    from notebook_runner import assert_fails_in_validation

    nb = Path(__file__).resolve().parents[1] / "notebooks" / "09_learning_rate_schedules.ipynb"
    assert_fails_in_validation(nb, tmp_path, name, **override)


def test_cosine_restarts_cycles_double_and_end_with_training():
    sched = schedules.make_schedule("cosine_restarts", 20, 79, 0.05, cycles=2)
    trace = schedules.lr_sequence(sched, 20, 79, 0.05)
    restarts = [i for i in range(1, len(trace)) if trace[i] > trace[i - 1]]
    first = math.ceil(20 * 79 / 3)  # T_0 = ceil(T / (2^2 - 1)) = 527
    assert restarts == [first] and trace[0] == trace[first] == 0.05
    assert trace[-1] < 1e-5  # the second cycle (2 T_0 = 1054 steps) ends with training
    three = schedules.lr_sequence(
        schedules.make_schedule("cosine_restarts", 20, 79, 0.05, cycles=3), 20, 79, 0.05
    )
    assert [i for i in range(1, len(three)) if three[i] > three[i - 1]] == [226, 678]
    with pytest.raises(ParameterError, match="cycles"):
        schedules.make_schedule("cosine_restarts", 20, 79, 0.05, cycles=0)


def test_the_optimizers_09_uses_by_name():
    """09 builds SGD with momentum and AdamW with decoupled decay through train.make_optimizer."""
    from nbhelpers.core.train import make_optimizer

    model = nn.Linear(2, 1)
    sgd = make_optimizer(model, "sgd", 0.1, momentum=0.8)
    adamw = make_optimizer(model, "adamw", 0.01, weight_decay=0.02)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.02
    with pytest.raises(ParameterError, match="optimizer"):
        make_optimizer(model, "lamb", 0.1)


def test_range_test_and_adamw_parameters():
    good = {"steps": 50, "lr_min": 1e-4, "lr_max": 1.0, "divisor": 2.0}
    assert schedules.check_range_test("RANGE_TEST", good) == good
    for bad, where in [({**good, "lr_max": 1e-5}, 'RANGE_TEST["lr_max"]'),
                       ({**good, "steps": 5}, 'RANGE_TEST["steps"]'),
                       ({"steps": 50}, "RANGE_TEST")]:  # fmt: skip
        with pytest.raises(ParameterError, match=re.escape(where)):
            schedules.check_range_test("RANGE_TEST", bad)
    a = schedules.check_adamw("ADAMW", {"lr": 1e-3, "weight_decay": 0.0, "schedules": ["onecycle"]})
    assert a["schedules"] == ["constant", "onecycle"]  # the reference comes first
    assert (
        schedules.check_adamw("ADAMW", {"lr": 1e-3, "weight_decay": 0.1, "schedules": []})[
            "schedules"
        ]
        == []
    )
    with pytest.raises(ParameterError, match=re.escape('ADAMW["schedules"]')):
        schedules.check_adamw("ADAMW", {"lr": 1e-3, "weight_decay": 0.0, "schedules": ["warm"]})
    with pytest.raises(ParameterError, match=re.escape('ADAMW["weight_decay"]')):
        schedules.check_adamw("ADAMW", {"lr": 1e-3, "weight_decay": -1, "schedules": []})


def test_adamw_range_test_runs_and_leaves_the_model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3))
    before = [p.clone() for p in m.parameters()]
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))] * 3
    t = schedules.lr_range_test(m, data, 1e-4, 1.0, 12, optimizer="adamw", weight_decay=0.01)
    assert len(t) >= 2 and t["lr"].iloc[0] == pytest.approx(1e-4)
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_versus_constant_and_scaling_tables():
    seeds = [0, 1]
    right = {
        ("constant", 0): [1, 0, 0, 1], ("constant", 1): [1, 0, 0, 1],
        ("onecycle", 0): [1, 1, 0, 1], ("onecycle", 1): [1, 1, 1, 1],
    }  # fmt: skip
    res = pd.DataFrame([{"schedule": n, "seed": s, "test_accuracy": np.mean(v),
                         "val_accuracy": 0.5, "train_loss": 0.1, "train_accuracy": 0.9,
                         "train_seconds": 1.0} for (n, s), v in right.items()])  # fmt: skip
    t = lesson.versus_constant(res, right, seeds)
    assert t.loc["onecycle", "gain_vs_constant_points"] == pytest.approx(37.5)
    assert t.loc["constant", "verdict"] == "reference" and t.loc["onecycle", "gain_high"] >= 37.5
    assert lesson.versus_constant(pd.DataFrame(), {}, seeds).empty
    runs = {((4, "lr x k"), s): right["onecycle", s] for s in seeds}
    runs.update({((4, "same lr"), s): [0, 0, 0, 1] for s in seeds})
    rows = pd.DataFrame([{"k": k, "rule": r, "batch": 256, "lr": 0.2 if r == "lr x k" else 0.05,
                          "seed": s, "test_accuracy": np.mean(v)}
                         for ((k, r), s), v in runs.items()])  # fmt: skip
    sc = lesson.scaling_table(rows, runs, {s: right["constant", s] for s in seeds}, seeds)
    assert sc.loc[(4, "lr x k"), "vs_reference_points"] == pytest.approx(37.5)
    assert sc.loc[(4, "same lr"), "vs_reference_points"] == pytest.approx(-25.0)
    assert sc.loc[(4, "lr x k"), "seeds"] == 2
    assert (lesson.scaling_table(rows, runs, {}, seeds)["verdict"] == "no reference").all()
    base = lesson.per_schedule(_results())
    f = lesson.summary(
        base, "onecycle", pd.DataFrame(columns=["schedule", "seed", "epochs", "test_accuracy"]),
        pd.DataFrame({"mean": [0.91]}, index=pd.Index([0.05], name="lr")),
        {"lr_min_loss": 0.8, "max_lr": 0.4}, {}, steps_per_epoch=2, base_lr=0.05,
        test_size=1000, adamw=t, scaling=sc, sgd=t,
    )  # fmt: skip
    assert f.loc["AdamW onecycle minus AdamW constant", "value"] == pytest.approx(37.5)
    assert f.loc["SGD onecycle minus SGD constant", "value"] == pytest.approx(37.5)
    assert "AdamW constant minus AdamW constant" not in f.index
    assert f.loc["batch x4, same lr: minus the small batch", "value"] == pytest.approx(-25.0)
    assert f.loc["batch x4, lr x k: minus the small batch", "context"].endswith(
        sc.loc[(4, "lr x k"), "verdict"]
    )
    assert f["context"].str.len().max() <= 50


def test_trace_shape_tells_decay_from_warm_up_and_restarts():
    assert lesson.trace_shape([0.1] * 4) == "constant"
    assert lesson.trace_shape([0.1, 0.1, 0.01, 0.001]) == "decays only"  # step, plateau
    assert lesson.trace_shape([0.01, 0.05, 0.1]) == "rises only"
    assert lesson.trace_shape([0.01, 0.1, 0.05, 0.0]) == "rises, then decays"  # warm-up
    assert lesson.trace_shape([0.1, 0.01, 0.1, 0.01]) == "decays, then rises again"  # SGDR
    assert lesson.trace_shape([0.1, 0.1 * (1 + 1e-12), 0.1]) == "constant"  # rounding
    assert set(lesson.SHAPES) == {
        "constant", "decays only", "rises only", "rises, then decays", "decays, then rises again"
    }  # fmt: skip


def test_summary_counts_rules_that_only_decay():
    traces = {
        "constant": [0.05] * 4,
        "step": [0.05, 0.05, 0.005, 0.005],
        "onecycle": [0.01, 0.2, 0.1, 0.0],
        "cosine_restarts": [0.05, 0.0, 0.05, 0.0],
    }
    f = lesson.summary(
        lesson.per_schedule(_results()), "onecycle",
        pd.DataFrame(columns=["schedule", "seed", "epochs", "test_accuracy"]),
        pd.DataFrame({"mean": [0.91]}, index=pd.Index([0.05], name="lr")),
        {"lr_min_loss": 0.8, "max_lr": 0.2}, traces, steps_per_epoch=1, base_lr=0.05,
        test_size=1000,
    )  # fmt: skip
    assert f.loc["rules that only decay", "value"] == 1
    assert f.loc["rules that only decay", "context"] == "step"
    assert f.loc["rules that raise the rate at some point", "value"] == 2
    assert (
        f.loc["rules that raise the rate at some point", "context"] == "onecycle, cosine_restarts"
    )


@pytest.mark.parametrize(
    "override, name",
    [
        ({"SCALE_FACTORS": [1]}, "SCALE_FACTORS"),
        ({"ADAMW": {"lr": 0.001, "weight_decay": 0.0, "schedules": ["linear"]}}, "ADAMW"),
        ({"RANGE_TEST": {"steps": 200}}, "RANGE_TEST"),
        ({"RESTART_CYCLES": 0}, "RESTART_CYCLES"),
    ],
)
def test_notebook_new_parameters_fail_in_validation(override, name, tmp_path):
    from pathlib import Path

    from notebook_runner import assert_fails_in_validation

    nb = Path(__file__).resolve().parents[1] / "notebooks" / "09_learning_rate_schedules.ipynb"
    assert_fails_in_validation(nb, tmp_path, name, **override)


def test_headroom_rows_say_whether_the_target_is_reachable():
    from nbhelpers.lessons.lr_schedules import _headroom_rows

    rows = _headroom_rows({"difference": 0.6, "low": 0.4, "high": 0.8, "factor": 3}, 1.0)
    assert rows[0][:2] == ("headroom: best at k x EPOCHS minus constant", 0.6)
    assert rows[1][:2] == ("target reachable with more epochs", False)
    reach = _headroom_rows({"difference": 0.9, "low": 0.7, "high": 1.1, "factor": 3}, 1.0)
    assert reach[1][1] is True
    assert _headroom_rows(None, 1.0) == []
    assert _headroom_rows({"difference": float("nan"), "low": 0, "high": 0, "factor": 0}, 1.0) == []
