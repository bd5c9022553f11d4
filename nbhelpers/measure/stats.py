"""Paired statistics for two models scored on the same test images: intervals and exact tests.

Each model is given as a boolean array, one entry per test image: True where it was right. Two
models are compared on the same images, so the comparison is paired: only the images where they
disagree (the discordant pairs) carry information about which is better.

* ``wilson_interval`` / ``accuracy_interval``: one model's accuracy with a Wilson score interval.
* ``paired_difference``: accuracy of B minus accuracy of A, in percentage points, with Newcombe's
  hybrid score interval for paired proportions (method 10 of Newcombe 1998, Statistics in
  Medicine 17:2635-2650) or a percentile bootstrap over the test images.
* ``mcnemar_exact``: McNemar's exact test, a two-sided binomial test on the discordant pairs.
* ``paired_table``: every model against a baseline, with a verdict "better", "worse" or
  "within noise" (the interval of the difference contains zero).
* ``seed_summary``, ``seed_interval``, ``seeds_paired_difference`` (defined in
  ``nbhelpers.measure.seeds``, importable from here): a metric over seeds, and two settings
  trained with the same seeds and scored on the same images.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _st

from nbhelpers.core.params import (
    ParameterError,
    check_choice,
    check_fraction,
    check_int,
    check_seed,
)
from nbhelpers.measure.inputs import _Described, as_correct
from nbhelpers.measure.seeds import (
    SEED_COLUMNS,
    SeedSummary,
    seed_interval,
    seed_summary,
    seeds_paired_difference,
)
from nbhelpers.measure.verdicts import VERDICTS, verdict

METHODS = ("newcombe", "bootstrap")


def _pair(correct_a: Any, correct_b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = as_correct("correct_a", correct_a), as_correct("correct_b", correct_b)
    if len(a) != len(b):
        raise ParameterError(
            "correct_b",
            _Described(correct_b),
            f"a boolean array of the same length as correct_a ({len(a)}): the same test images",
        )
    return a, b


@functools.lru_cache(maxsize=16)
def _z(confidence: float) -> float:
    return float(_st.norm.ppf(0.5 + confidence / 2))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a single proportion ``successes / n``.

    Args:
        successes: the number of successes, 0 to n.
        n: the number of trials, at least 1.
        confidence: the confidence level, strictly between 0 and 1.

    Returns:
        (low, high) as fractions in [0, 1].
    """
    n = check_int("n", n, minimum=1)
    successes = check_int("successes", successes, minimum=0, maximum=n)
    confidence = check_fraction("confidence", confidence)
    z = _z(confidence)
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, center - half)  # exact at the ends
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def accuracy_interval(correct: Any, confidence: float = 0.95) -> dict[str, float]:
    """One model's accuracy with its Wilson score interval, in percentage points.

    Args:
        correct: boolean array, True where the model was right.
        confidence: the confidence level, strictly between 0 and 1.

    Returns:
        A dict with ``accuracy``, ``low``, ``high`` (points, 0 to 100) and ``n``.
    """
    c = as_correct("correct", correct)
    confidence = check_fraction("confidence", confidence)
    k, n = int(c.sum()), len(c)
    low, high = wilson_interval(k, n, confidence)
    return {"accuracy": 100.0 * k / n, "low": 100.0 * low, "high": 100.0 * high, "n": n}


def discordant_counts(correct_a: Any, correct_b: Any) -> dict[str, int]:
    """The paired 2x2 table of two models on the same images.

    Args:
        correct_a: boolean array, True where model A was right.
        correct_b: boolean array of the same length, for model B.

    Returns:
        A dict with ``n11`` (both right), ``b01`` (A wrong, B right), ``b10`` (A right,
        B wrong), ``n00`` (both wrong) and ``n``.
    """
    a, b = _pair(correct_a, correct_b)
    return {
        "n11": int(np.sum(a & b)),
        "b01": int(np.sum(~a & b)),
        "b10": int(np.sum(a & ~b)),
        "n00": int(np.sum(~a & ~b)),
        "n": len(a),
    }


def newcombe_interval(
    n11: int, b01: int, b10: int, n00: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Newcombe's hybrid score interval for the paired difference ``(b01 - b10) / n``.

    Method 10 of Newcombe (1998), "Improved confidence intervals for the difference between
    binomial proportions based on paired data", Statistics in Medicine 17:2635-2650: Wilson
    intervals of the two accuracies combined by square-and-add, with their correlation
    estimated by the continuity-corrected phi coefficient of the 2x2 table.

    Args:
        n11: images both models got right.
        b01: images A got wrong and B right.
        b10: images A got right and B wrong.
        n00: images both got wrong.
        confidence: the confidence level, strictly between 0 and 1.

    Returns:
        (low, high) of accuracy(B) - accuracy(A), as fractions in [-1, 1].
    """
    for name, v in (("n11", n11), ("b01", b01), ("b10", b10), ("n00", n00)):
        check_int(name, v, minimum=0)
    n = n11 + b01 + b10 + n00
    if n == 0:
        raise ParameterError("n11", n11, "counts with n11 + b01 + b10 + n00 >= 1")
    confidence = check_fraction("confidence", confidence)
    # B's accuracy p1 and A's p2, as the table's row and column margins.
    right_b, right_a = n11 + b01, n11 + b10
    p1, p2 = right_b / n, right_a / n
    l1, u1 = wilson_interval(right_b, n, confidence)
    l2, u2 = wilson_interval(right_a, n, confidence)
    margins = right_b * (n - right_b) * right_a * (n - right_a)
    cross = n11 * n00 - b01 * b10
    if margins == 0:
        phi = 0.0
    elif cross > n / 2:
        phi = (cross - n / 2) / math.sqrt(margins)
    elif cross >= 0:
        phi = 0.0
    else:
        phi = cross / math.sqrt(margins)
    d = p1 - p2
    below = (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)
    above = (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1)
    return max(-1.0, d - math.sqrt(max(below, 0.0))), min(1.0, d + math.sqrt(max(above, 0.0)))


def bootstrap_interval(
    b01: int, b10: int, n: int, confidence: float = 0.95, n_boot: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the paired difference, resampling the test images.

    The difference of a resample depends only on how many of its images fall in each of the
    three kinds (A wrong and B right, A right and B wrong, concordant), so each resample is drawn
    as one multinomial draw of n images: the same distribution as resampling images one by one.

    Args:
        b01: images A got wrong and B right.
        b10: images A got right and B wrong.
        n: all images.
        confidence: the confidence level, strictly between 0 and 1.
        n_boot: number of resamples, at least 100.
        seed: seed of the resampling.

    Returns:
        (low, high) of accuracy(B) - accuracy(A), as fractions.
    """
    n = check_int("n", n, minimum=1)
    check_int("b01", b01, minimum=0, maximum=n)
    check_int("b10", b10, minimum=0, maximum=n - b01)
    confidence = check_fraction("confidence", confidence)
    n_boot = check_int("n_boot", n_boot, minimum=100)
    seed = check_seed("seed", seed)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, [b01 / n, b10 / n, (n - b01 - b10) / n], size=n_boot)
    diffs = (draws[:, 0] - draws[:, 1]) / n
    alpha = 1 - confidence
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def mcnemar_exact(correct_a: Any, correct_b: Any) -> float:
    """McNemar's exact test: two-sided binomial test of the discordant pairs against 1/2.

    Args:
        correct_a: boolean array, True where model A was right.
        correct_b: boolean array of the same length, for model B.

    Returns:
        The p-value; 1.0 when the models never disagree.
    """
    t = discordant_counts(correct_a, correct_b)
    return _mcnemar_p(t["b01"], t["b10"])


def _mcnemar_p(b01: int, b10: int) -> float:
    if b01 + b10 == 0:
        return 1.0
    return float(_st.binomtest(b01, b01 + b10, 0.5, alternative="two-sided").pvalue)


def paired_difference(
    correct_a: Any,
    correct_b: Any,
    confidence: float = 0.95,
    method: str = "newcombe",
    n_boot: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy of model B minus model A on the same images, with a paired interval.

    Args:
        correct_a: boolean array, True where model A (e.g. the baseline) was right.
        correct_b: boolean array of the same length, for model B.
        confidence: the confidence level, strictly between 0 and 1.
        method: "newcombe" (Newcombe's hybrid score interval, method 10) or "bootstrap"
            (percentile bootstrap over the test images).
        n_boot: bootstrap resamples (method "bootstrap" only), at least 100.
        seed: seed of the bootstrap.

    Returns:
        A dict with ``difference``, ``low``, ``high`` (percentage points, B - A), ``n``,
        ``b01`` (A wrong, B right), ``b10`` (A right, B wrong), ``method``, ``confidence`` and
        ``verdict`` ("better", "worse" or "within noise" for B against A).
    """
    t = discordant_counts(correct_a, correct_b)
    confidence = check_fraction("confidence", confidence)
    check_choice("method", method, METHODS)
    if method == "newcombe":
        low, high = newcombe_interval(t["n11"], t["b01"], t["b10"], t["n00"], confidence)
    else:
        low, high = bootstrap_interval(t["b01"], t["b10"], t["n"], confidence, n_boot, seed)
    return {
        "difference": 100.0 * (t["b01"] - t["b10"]) / t["n"],
        "low": 100.0 * low,
        "high": 100.0 * high,
        "n": t["n"],
        "b01": t["b01"],
        "b10": t["b10"],
        "method": method,
        "confidence": confidence,
        "verdict": verdict(100.0 * low, 100.0 * high),
    }


def paired_table(
    predictions: Mapping[str, Any],
    baseline: str,
    confidence: float = 0.95,
    method: str = "newcombe",
    n_boot: int = 10000,
    seed: int = 0,
) -> pd.DataFrame:
    """Every model against the baseline on the same test images: accuracies, differences, tests.

    Args:
        predictions: {model name: boolean array, True where that model was right}, all of the
            same length, one entry per test image in the same order.
        baseline: the name of the model the others are compared with.
        confidence: the confidence level of all intervals, strictly between 0 and 1.
        method: interval of the differences, "newcombe" or "bootstrap" (see
            ``paired_difference``); accuracies always get Wilson intervals.
        n_boot: bootstrap resamples (method "bootstrap" only).
        seed: seed of the bootstrap.

    Returns:
        One row per model, the baseline first, then in the mapping's order, with columns
        ``model``, ``n``, ``accuracy``, ``acc_low``, ``acc_high`` (points), ``difference``,
        ``diff_low``, ``diff_high`` (points, model - baseline), ``b01`` (baseline wrong, model
        right), ``b10`` (baseline right, model wrong), ``p_mcnemar`` and ``verdict`` ("better",
        "worse", "within noise"; "baseline" for the baseline, whose comparison columns are NaN).
    """
    if not isinstance(predictions, Mapping) or len(predictions) == 0:
        raise ParameterError(
            "predictions",
            _Described(predictions),
            "a non-empty mapping {model name: boolean array}",
        )
    check_choice("baseline", baseline, list(predictions))
    confidence = check_fraction("confidence", confidence)
    check_choice("method", method, METHODS)
    if method == "bootstrap":
        check_int("n_boot", n_boot, minimum=100)
        check_seed("seed", seed)
    base = as_correct(f"predictions[{baseline!r}]", predictions[baseline])
    checked = {}
    for name, correct in predictions.items():
        arr = as_correct(f"predictions[{name!r}]", correct)
        if len(arr) != len(base):
            raise ParameterError(
                f"predictions[{name!r}]",
                _Described(correct),
                f"a boolean array of the baseline's length ({len(base)}): the same test images",
            )
        checked[name] = arr
    rows = []
    for name in [baseline] + [k for k in checked if k != baseline]:
        acc = accuracy_interval(checked[name], confidence)
        row = {
            "model": name,
            "n": acc["n"],
            "accuracy": acc["accuracy"],
            "acc_low": acc["low"],
            "acc_high": acc["high"],
        }
        if name == baseline:
            row.update(
                difference=0.0,
                diff_low=math.nan,
                diff_high=math.nan,
                b01=0,
                b10=0,
                p_mcnemar=math.nan,
                verdict="baseline",
            )
        else:
            d = paired_difference(base, checked[name], confidence, method, n_boot, seed)
            row.update(
                difference=d["difference"],
                diff_low=d["low"],
                diff_high=d["high"],
                b01=d["b01"],
                b10=d["b10"],
                p_mcnemar=_mcnemar_p(d["b01"], d["b10"]),
                verdict=d["verdict"],
            )
        rows.append(row)
    return pd.DataFrame(rows)


#: What this module offers; the checks, the verdict word and the over-seeds statistics are defined
#: in ``inputs``, ``verdicts`` and ``seeds`` and offered here with the paired statistics.
__all__ = [
    "METHODS",
    "SEED_COLUMNS",
    "VERDICTS",
    "SeedSummary",
    "accuracy_interval",
    "as_correct",
    "bootstrap_interval",
    "discordant_counts",
    "mcnemar_exact",
    "newcombe_interval",
    "paired_difference",
    "paired_table",
    "seed_interval",
    "seed_summary",
    "seeds_paired_difference",
    "verdict",
    "wilson_interval",
]
