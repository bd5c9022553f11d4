"""Notebook 08's robustness diagnosis: the warm-up schedule, the table and its facts, exactly."""

import numpy as np
import pytest
import torch

from nbhelpers.lessons import bn_robustness as rb


def test_linear_warmup_rises_then_stays():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=2.0)
    sched = rb.linear_warmup(4)(opt)
    rates = []
    for _ in range(6):
        rates.append(opt.param_groups[0]["lr"])
        opt.step(), sched.step()
    assert rates == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        rb.linear_warmup(0)


def _hits(n_right, n=100):
    return np.arange(n) < n_right


def test_table_and_facts_against_the_best_rate():
    facts = {
        "mlp": {"bn_best_lr": 0.1, "robust_lr": 1.0},
        "lenet5": {"bn_best_lr": 0.1, "robust_lr": float("nan")},  # no robustness rate: no rows
    }
    val = {("mlp", True, 0.1): [_hits(90), _hits(90)], ("mlp", True, 1.0): [_hits(50), _hits(50)]}
    extra = {
        ("mlp", "with warm-up"): [_hits(60), _hits(60)],
        ("mlp", "without momentum"): [_hits(89), _hits(89)],
    }
    t = rb.table(facts, val, extra).set_index("variant")
    assert list(t.index) == ["as in the sweep", "with warm-up", "without momentum"]
    assert t["below_best_points"].tolist() == pytest.approx([40.0, 30.0, 1.0])
    assert t.loc["without momentum", "within_1_point"]
    assert not t.loc["with warm-up", "within_1_point"]
    assert t.loc["with warm-up", "val_accuracy"] == pytest.approx(0.6)
    assert (t["low"] <= t["below_best_points"]).all() and (
        t["high"] >= t["below_best_points"]
    ).all()
    f = rb.summary(t.reset_index())
    assert f.loc["mlp: points recovered with warm-up", "value"] == pytest.approx(10.0)
    assert f.loc["mlp: points recovered without momentum", "value"] == pytest.approx(39.0)
    assert (
        f.loc["mlp: BN below its best at the robustness rate, as in the sweep", "unit"] == "points"
    )
    assert len(f) == 5


def test_missing_runs_leave_rows_out():
    facts = {"mlp": {"bn_best_lr": 0.1, "robust_lr": 1.0}}
    val = {("mlp", True, 0.1): [_hits(90)], ("mlp", True, 1.0): [_hits(50)]}
    t = rb.table(facts, val, {})
    assert t["variant"].tolist() == ["as in the sweep"]
    assert rb.summary(rb.table({}, {}, {})).empty
