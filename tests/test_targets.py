"""nbhelpers.measure.targets: verdicts on measured figures."""

import math

import pytest

from nbhelpers.core.params import ParameterError
from nbhelpers.measure.targets import target, targets_table


def test_verdicts():
    assert target("size", 12.0, ">=", 10, "x")["met"] is True
    assert target("size", 9.99, ">=", 10, "x")["met"] is False
    assert target("loss", 1.0, "<=", 1.0, "points")["met"] is True
    assert target("loss", math.nan, "<=", 1.0)["met"] is False
    with pytest.raises(ParameterError, match="op"):
        target("x", 1, ">", 0)


def test_table():
    df = targets_table(
        [target("int8 loss", 0.2, "<=", 0.5, "points"), target("speed-up", 1.5, ">=", 2, "x")]
    )
    assert df.to_dict(orient="records") == [
        {"target": "int8 loss", "measured": "0.2 points", "goal": "<= 0.5 points", "met": "yes"},
        {"target": "speed-up", "measured": "1.5 x", "goal": ">= 2 x", "met": "NO"},
    ]


def test_interval_decides_or_not():
    """Loss of 0.3 points, goal <= 0.5: met; decided only if the whole interval is <= 0.5."""
    sure = target("loss", 0.3, "<=", 0.5, "points", interval=(0.1, 0.45))
    unsure = target("loss", 0.3, "<=", 0.5, "points", interval=(0.05, 0.62))
    missed = target("gain", 0.2, ">=", 1.0, "points", interval=(-0.3, 0.7))
    assert sure["met"] and sure["decided"] is True and unsure["met"] and unsure["decided"] is False
    assert not missed["met"] and missed["decided"] is True  # the whole interval is below the goal
    assert target("x", 1.0, ">=", 0.5)["decided"] is None
    df = targets_table([sure, unsure, missed])
    assert df["measured"].tolist() == [
        "0.3 [0.1, 0.45] points",
        "0.3 [0.05, 0.62] points",
        "0.2 [-0.3, 0.7] points",
    ]
    assert df["met"].tolist() == ["yes", "yes (goal in the interval)", "NO"]
    with pytest.raises(ValueError, match="ordered"):
        target("x", 1.0, ">=", 0.5, interval=(2.0, 1.0))


def test_points_lost_flips_the_interval():
    from nbhelpers.measure.targets import points_lost

    loss, (lo, hi) = points_lost(
        {"accuracy_delta_points": -0.3, "delta_low_points": -0.5, "delta_high_points": -0.1}
    )
    assert (loss, lo, hi) == (0.3, 0.1, 0.5)


def test_text_of_a_target_read_back_from_json():
    """Recorded targets pass through JSON: a NaN interval comes back as None."""
    import json

    from nbhelpers.measure.targets import measured_text, verdict_text

    back = json.loads(json.dumps(target("size", 4.0, ">=", 3.9, "x")).replace("NaN", "null"))
    assert back["low"] is None and measured_text(back) == "4 x" and verdict_text(back) == "yes"
    old = {"name": "x", "measured": 1.0, "op": ">=", "threshold": 2.0, "unit": "", "met": False}
    assert (
        measured_text(old) == "1" and verdict_text(old) == "NO"
    )  # recorded before intervals existed


def test_no_negative_zero():
    from nbhelpers.measure.targets import measured_text

    assert (
        measured_text(target("loss", -0.0, "<=", 1, "points", interval=(-0.4, 0.4)))
        == "0 [-0.4, 0.4] points"
    )


def test_censored_count_is_met_only_when_every_seed_reached():
    """A mean of trials to a goal with a seed that never reached it is a lower bound: not met, even
    when the bound is under the threshold, and the row says how many seeds reached."""
    t = target("GP trials", 18.4, "<=", 18.67, "trials", "a sixth", reached=8, seeds=10, cap=30)
    assert t["met"] is False and t["censored"] is True
    assert (t["reached"], t["seeds"], t["cap"]) == (8, 10, 30)
    assert t["note"] == "8/10 seeds reached within 30; a sixth"
    row = targets_table([t]).iloc[0]
    assert row["measured"] == ">= 18.4 trials"
    assert row["met"] == "NO (8/10 seeds reached)"


def test_uncensored_count_is_judged_on_its_mean():
    met = target("trials", 18.4, "<=", 18.67, "trials", reached=10, seeds=10, cap=30)
    missed = target("trials", 19.0, "<=", 18.67, "trials", reached=10, seeds=10, cap=30)
    assert met["met"] is True and met["censored"] is False
    assert missed["met"] is False and targets_table([met]).iloc[0]["measured"] == "18.4 trials"


def test_censored_target_refuses_partial_or_impossible_counts():
    with pytest.raises(ValueError, match="together"):
        target("trials", 3.0, "<=", 5.0, reached=2, seeds=3)
    with pytest.raises(ValueError, match="reached <= seeds"):
        target("trials", 3.0, "<=", 5.0, reached=4, seeds=3, cap=10)
