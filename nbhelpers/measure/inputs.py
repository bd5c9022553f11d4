"""The per-image correctness arrays every paired statistic takes: checked, and described in errors
without their values."""

from __future__ import annotations

from typing import Any

import numpy as np

from nbhelpers.core.params import ParameterError


class _Described:
    """Stands for a large input in an error message: its type, shape and dtype, not its values."""

    def __init__(self, x: Any):
        arr = np.asarray(x) if not isinstance(x, (str, bytes)) else None
        self.text = (
            f"{type(x).__name__} of shape {arr.shape}, dtype {arr.dtype}"
            if arr is not None
            else repr(x)
        )

    def __repr__(self) -> str:
        return f"<{self.text}>"


def as_correct(name: str, correct: Any) -> np.ndarray:
    """Check that ``correct`` is a non-empty 1-D boolean array (one entry per test image).

    Args:
        name: the argument's name, for the error.
        correct: a boolean array, list of bools or boolean tensor: True where the model was right.

    Returns:
        The values as a 1-D numpy bool array.
    """
    allowed = "a non-empty 1-D boolean array (True where the model was right)"
    try:
        arr = np.asarray(correct)
    except Exception as e:  # objects numpy cannot take
        raise ParameterError(name, _Described(correct), allowed) from e
    if arr.dtype != np.bool_ or arr.ndim != 1 or arr.size == 0:
        raise ParameterError(name, _Described(correct), allowed)
    return arr
