"""Unit tests of nbhelpers.techniques.recipe (the folding/int8 split of a speed-up) and of
nbhelpers.lessons.your_own_model (the loss in words, 11's facts)."""

from __future__ import annotations

import pandas as pd
import pytest

from nbhelpers.lessons import your_own_model as lesson
from nbhelpers.techniques import recipe


@pytest.mark.parametrize(
    "loss,low,high,words",
    [
        (0.3, 0.1, 0.6, "a loss beyond noise, within the 1-point budget"),
        (0.1, -0.2, 0.45, "no change beyond noise, within the 1-point budget"),
        (-0.5, -0.8, -0.2, "a gain beyond noise, within the 1-point budget"),
        (1.6, 1.2, 2.0, "a loss beyond noise, beyond the 1-point budget"),
        (
            0.8,
            0.56,
            1.06,
            "a loss beyond noise, within the 1-point budget at its point value, its interval"
            " reaching past it",
        ),
        (
            1.1,
            0.9,
            1.3,
            "a loss beyond noise, beyond the 1-point budget at its point value, its interval"
            " reaching back within it",
        ),
        (0.5, 0.0, 1.0, "no change beyond noise, within the 1-point budget"),  # ends inclusive
    ],
)
def test_loss_verdict_reads_the_interval_against_zero_and_the_budget(loss, low, high, words):
    assert lesson.loss_verdict(loss, low, high, 1.0) == words


def test_loss_verdict_refuses_a_loss_outside_its_interval():
    with pytest.raises(ValueError, match="outside its interval"):
        lesson.loss_verdict(2.0, 0.1, 0.5, 1.0)


def speeds() -> pd.DataFrame:
    """Speed-ups over a dense model at batch 64, as ``measure.compare`` gives them."""
    return pd.DataFrame(
        {"speedup_b64": [1.0, 2.0, 8.0, 4.0, 5.0, 20.0]},
        index=["dense", "dense folded", "dense int8", "pruned", "pruned folded", "pruned int8"],
    )


def test_speed_split_multiplies_back_to_the_int8_speedup():
    s = recipe.speed_split(speeds(), "dense", "dense folded", "dense int8", 64)
    assert s == {"folding": 2.0, "int8": 4.0, "both": 8.0}
    p = recipe.speed_split(speeds(), "pruned", "pruned folded", "pruned int8", 64)
    assert p["folding"] == 1.25 and p["int8"] == 4.0 and p["both"] == p["folding"] * p["int8"]


def test_summary_states_the_split_the_loss_and_the_cpu():
    names = {k: k.replace("_", " ") for k in ("dense", "dense_folded", "dense_int8", "plain")}
    names |= {"distilled": "pruned", "folded": "pruned folded", "int8": "pruned int8"}
    table = speeds().assign(
        accuracy=0.98, params=[100, 90, 90, 25, 22, 22], macs=[400, 400, 400, 100, 100, 100],
        size_ratio=[1.0, 1.0, 3.5, 3.0, 3.3, 11.0],
    )  # fmt: skip
    pairs = {"d-p": ("distilled", "plain"), "d-s": ("distilled", "scratch"),
             "d-m": ("distilled", "dense_more"), "q-f": ("int8", "distilled")}  # fmt: skip
    paired = pd.DataFrame({"difference": [0.1, 0.2, -0.3, -0.05]}, index=list(pairs))
    machine = {"cpu": "Some Xeon", "vnni": True, "amx": False}
    f = lesson.summary(
        table, paired, pairs, names, batch=64, one_shot=0.3,
        fold_change={"max |logit difference|": 1e-6}, reload_identical=True,
        loss=(0.8, (0.56, 1.06)), budget=1.0, targets=[{"met": True}, {"met": False}],
        machine=machine, threads=1,
    ).value  # fmt: skip
    assert f["dense: BN folding speedup"] == 2.0 and f["dense: int8 over folded fp32"] == 4.0
    assert f["dense int8: speedup over dense fp32"] == 8.0
    assert f["pruned: BN folding speedup"] == 1.25 and f["pruned: int8 over folded fp32"] == 4.0
    assert f["compressed: speedup"] == 20.0 and f["pruned: fewer MACs"] == 4.0
    assert f["pruned: parameters kept"] == 0.25 and f["int8 minus fp32"] == -0.05
    assert f["compressed: loss verdict"].startswith("a loss beyond noise, within the 1-point")
    assert f["targets met"] == 1 and f["CPU: model"] == "Some Xeon"
    assert f["CPU: VNNI"] is True and f["CPU: AMX int8"] is False and f["CPU: threads timed"] == 1
