"""A metric over seeds: mean, spread and a t interval, and two settings trained with the same seeds
and scored on the same images (the mean difference with a bootstrap interval over the images)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy import stats as _st

from nbhelpers.core.params import ParameterError, check_fraction, check_int, check_seed
from nbhelpers.measure.inputs import _Described
from nbhelpers.measure.verdicts import verdict


class SeedSummary(NamedTuple):
    """Mean, sample standard deviation (ddof=1; NaN for one value) and count over seeds."""

    mean: float
    std: float
    n: int


def seed_summary(values: Sequence[float] | np.ndarray) -> SeedSummary:
    """Mean, sample standard deviation and count of one metric over seeds.

    Args:
        values: the metric of each seed, finite numbers, at least one.

    Returns:
        ``SeedSummary(mean, std, n)``; std uses ddof=1 and is NaN for a single value.
    """
    allowed = "a non-empty list of finite numbers, one per seed"
    if isinstance(values, (str, bytes, Mapping)):
        raise ParameterError("values", values, allowed)
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as e:
        raise ParameterError("values", values, allowed) from e
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ParameterError("values", values, allowed)
    if any(isinstance(v, (bool, np.bool_)) for v in np.asarray(values, dtype=object)):
        raise ParameterError("values", values, allowed)
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else math.nan
    return SeedSummary(float(arr.mean()), std, int(arr.size))


#: The columns of ``seeds_paired_difference`` that a notebook's seeds table shows.
SEED_COLUMNS = (
    "difference",
    "low",
    "high",
    "verdict",
    "seed_std",
    "seed_low",
    "seed_high",
    "seed_verdict",
)


def seed_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of a mean over seeds: mean +- t(n - 1) sd / sqrt(n).

    Args:
        values: one value per seed.
        confidence: the confidence level.

    Returns:
        (low, high); (NaN, NaN) for fewer than two seeds.
    """
    s = seed_summary(values)
    if s.n < 2:
        return math.nan, math.nan
    half = float(_st.t.ppf(0.5 + confidence / 2, s.n - 1)) * s.std / math.sqrt(s.n)
    return s.mean - half, s.mean + half


def _seed_matrix(name: str, correct: Any) -> np.ndarray:
    """``correct`` as a (seeds, images) boolean matrix; a 1-D array is one seed."""
    arr = np.asarray(correct)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.size == 0 or arr.dtype != bool:
        raise ParameterError(
            name,
            _Described(correct),
            "a non-empty boolean array of shape (images,) or (seeds, images)",
        )
    return arr


def seeds_paired_difference(
    correct_a: Any, correct_b: Any, confidence: float = 0.95, n_boot: int = 10000, seed: int = 0
) -> dict[str, Any]:
    """Mean accuracy of B minus A over seeds, both scored on the same images, with a paired
    interval.

    Row ``s`` of each matrix is the run with seed ``s`` (the same seeds for A and B). Each image's
    difference is averaged over the seeds first, ``d_i = mean_s(b_si - a_si)``; the interval is a
    percentile bootstrap of ``mean_i d_i`` over the images (drawn as one multinomial over the
    distinct values of ``d_i``, the same distribution as resampling images one by one). It holds the
    seeds fixed: the spread over seeds is returned beside it (``seed_std``), not folded in.

    Args:
        correct_a: boolean (seeds, images) or (images,): True where setting A was right.
        correct_b: the same shape, for setting B.
        confidence: the confidence level, strictly between 0 and 1.
        n_boot: bootstrap resamples, at least 100.
        seed: seed of the bootstrap.

    Returns:
        A dict with ``difference``, ``low``, ``high`` (percentage points, B - A), ``n`` (images),
        ``seeds``, ``seed_std`` (sample sd over seeds of each seed's difference, points; NaN for one
        seed), ``verdict`` ("better", "worse" or "within noise"), and the Student-t interval of the
        mean per-seed difference, ``seed_low``, ``seed_high`` with its ``seed_verdict``: whether
        another draw of seeds would agree (NaN and "one seed" for a single seed).
    """
    a, b = _seed_matrix("correct_a", correct_a), _seed_matrix("correct_b", correct_b)
    if a.shape != b.shape:
        raise ParameterError(
            "correct_b", _Described(correct_b), f"the shape of correct_a, {a.shape}"
        )
    confidence = check_fraction("confidence", confidence)
    n_boot = check_int("n_boot", n_boot, minimum=100)
    rng = np.random.default_rng(check_seed("seed", seed))
    d = (b.astype(np.int64) - a.astype(np.int64)).mean(axis=0)
    values, counts = np.unique(d, return_counts=True)
    n = d.size
    means = rng.multinomial(n, counts / n, size=n_boot) @ values / n
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    per_seed = 100.0 * (b.mean(axis=1) - a.mean(axis=1))
    seed_low, seed_high = (
        seed_interval(per_seed, confidence) if len(per_seed) > 1 else (math.nan, math.nan)
    )
    return {
        "difference": 100.0 * float(d.mean()),
        "low": 100.0 * float(low),
        "high": 100.0 * float(high),
        "n": int(n),
        "seeds": int(a.shape[0]),
        "seed_std": float(np.std(per_seed, ddof=1)) if a.shape[0] > 1 else math.nan,
        "verdict": verdict(100.0 * float(low), 100.0 * float(high)),
        "seed_low": seed_low,
        "seed_high": seed_high,
        "seed_verdict": verdict(seed_low, seed_high) if len(per_seed) > 1 else "one seed",
    }
