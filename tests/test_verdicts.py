"""nbhelpers.measure.verdicts: one function decides where an interval of a difference lies; the
words and reasons every table shows come from it."""

import pytest

from nbhelpers.measure import stats
from nbhelpers.measure.verdicts import (
    VERDICTS,
    above_chance,
    interval_text,
    verdict,
    verdict_reason,
)


@pytest.mark.parametrize(
    "low,high,word,where",
    [
        (0.1, 2.0, "better", "lies above zero"),
        (-2.0, -0.1, "worse", "lies below zero"),
        (-0.5, 0.5, "within noise", "contains zero"),
        (0.0, 1.0, "within noise", "contains zero"),  # touching zero is not beyond it
        (-1.0, 0.0, "within noise", "contains zero"),
    ],
)
def test_verdict_and_its_reason_agree(low, high, word, where):
    assert verdict(low, high) == word and word in VERDICTS
    row = {"delta_low_points": low, "delta_high_points": high, "p_mcnemar": 0.5}
    assert verdict_reason(row) == f"the paired 95% interval {where}"
    assert interval_text(row) == f"95% CI [{low:+.2f}, {high:+.2f}], McNemar p = 0.5"


def test_stats_offers_the_same_verdict():
    assert stats.verdict is verdict and stats.VERDICTS is VERDICTS


def test_above_chance_needs_the_interval_above_guessing():
    assert above_chance({"accuracy_low": 0.11}) and not above_chance({"accuracy_low": 0.1})
