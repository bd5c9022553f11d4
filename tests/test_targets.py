"""nbhelpers.targets: verdicts on measured figures."""

import math

import pytest

from nbhelpers.params import ParameterError
from nbhelpers.targets import target, targets_table


def test_verdicts():
    assert target("size", 12.0, ">=", 10, "x")["met"] is True
    assert target("size", 9.99, ">=", 10, "x")["met"] is False
    assert target("loss", 1.0, "<=", 1.0, "points")["met"] is True
    assert target("loss", math.nan, "<=", 1.0)["met"] is False
    with pytest.raises(ParameterError, match="op"):
        target("x", 1, ">", 0)


def test_table():
    df = targets_table([target("int8 loss", 0.2, "<=", 0.5, "points"), target("speed-up", 1.5, ">=", 2, "x")])
    assert df.to_dict(orient="records") == [
        {"target": "int8 loss", "measured": "0.2 points", "goal": "<= 0.5 points", "met": "yes"},
        {"target": "speed-up", "measured": "1.5 x", "goal": ">= 2 x", "met": "NO"}]
