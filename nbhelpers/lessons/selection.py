"""Choosing a configuration by its test score (a common mistake) measured against choosing it by
cross-validation (notebook 01).

A hand-written tuning loop often fits every configuration, scores each on the test set and keeps
the best, then reports that best test score. The score is the maximum of many noisy estimates
and so overstates the chosen model's accuracy. Given which images each configuration got right
on the selection split (the "test set" the loop looks at) and on a second, untouched split,
``selection_optimism`` measures by how much, at several sizes of the selection set, beside the
configuration chosen by cross-validation; ``selection_summary`` turns its table into facts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from nbhelpers.core.params import ParameterError, check_fraction, check_int, check_list, check_seed
from nbhelpers.lessons.tuning import facts_of
from nbhelpers.measure import stats

#: Columns of ``selection_optimism``'s table, one row per size of the selection set.
OPTIMISM_COLUMNS = [
    "images",
    "subsets",
    "same as CV",
    "selected: selection score",
    "selected: untouched score",
    "optimism",
    "optimism low",
    "optimism high",
    "optimism verdict",
    "CV pick: gap",
    "CV pick: gap low",
    "CV pick: gap high",
    "CV pick: gap verdict",
    "paired optimism",
    "paired optimism low",
    "paired optimism high",
    "paired optimism verdict",
    "selected minus CV pick",
    "selected minus CV pick low",
    "selected minus CV pick high",
    "selected minus CV pick verdict",
]


def check_selection_sizes(name: str, sizes: Any, available: int) -> list[int]:
    """Check selection-set sizes against the images there are; 0 stands for all of them.

    Args:
        name: the parameter's name, for the error (e.g. ``"SELECTION_SIZES"``).
        sizes: a non-empty list of integers, each 0 (the whole split) or 1 to ``available``.
        available: images in the selection split.

    Returns:
        The sizes in images (0 replaced by ``available``).
    """
    available = check_int("available", available, minimum=1)
    checked = check_list(name, sizes, lambda n, v: check_int(n, v, minimum=0, maximum=available))
    return [v or available for v in checked]


def _correct_matrix(name: str, correct: Any) -> np.ndarray:
    """``correct`` as a non-empty (configurations, images) boolean matrix."""
    arr = np.asarray(correct)
    if arr.ndim != 2 or arr.size == 0 or arr.dtype != np.bool_:
        raise ParameterError(
            name,
            f"array of shape {arr.shape}",
            "a non-empty boolean (configurations, images) array",
        )
    return arr


def _boot_means(strata: Sequence[np.ndarray], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap draws of the mean over strata of each stratum's mean, resampling within each.

    Each stratum is resampled with replacement, drawn as one multinomial over its distinct values
    (the same distribution as resampling its entries one by one).
    """
    total = np.zeros(n_boot)
    for values in strata:
        distinct, counts = np.unique(values, return_counts=True)
        draws = rng.multinomial(len(values), counts / len(values), size=n_boot)
        total += draws @ distinct / len(values)
    return total / len(strata)


def _interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of bootstrap draws, in points."""
    alpha = 1 - confidence
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return 100.0 * float(low), 100.0 * float(high)


def selection_optimism(
    correct_selection: Any,
    correct_untouched: Any,
    cv_choice: int,
    sizes: Sequence[int],
    confidence: float = 0.95,
    n_boot: int = 10000,
    seed: int = 0,
) -> pd.DataFrame:
    """How much choosing by the selection score overstates the chosen model, per selection size.

    For each size ``n`` the selection images are shuffled (``seed``) and cut into
    ``m = images // n`` disjoint subsets of ``n`` (the rest is left out). On each subset the
    configuration with the best score is chosen (the first in trial order on a tie, as a loop
    keeping the best so far does) and its score there is what a loop choosing by test accuracy
    reports. Averaged over the subsets:

    * ``optimism``: the chosen configurations' selection score minus their untouched score;
    * ``CV pick: gap``: the same difference for the configuration chosen by cross-validation,
      which never saw the selection images: what the two splits differ by without selection;
    * ``paired optimism``: optimism minus that gap, i.e. (chosen minus CV pick on the selection
      images) minus (chosen minus CV pick on the untouched images): each lead compares two
      models on the same images, so the noise of which images a split happens to hold, shared by
      every configuration, cancels, and with it any difference between the two splits;
    * ``selected minus CV pick``: the chosen configurations against the CV pick on the untouched
      images (``stats.seeds_paired_difference`` over the untouched images, one row per subset).

    The first three get percentile bootstrap intervals over the images of both splits with the
    choices held fixed: each subset (within itself) and the untouched split are resampled
    independently, so an interval excluding zero says the selection score is not the score of
    an independent sample of images. ``optimism`` and ``CV pick: gap`` resample each model's
    right/wrong per image; ``paired optimism`` the paired per-image differences of both splits.
    The verdicts say where an interval lies: "above zero", "below zero" or "includes zero".

    Args:
        correct_selection: boolean (configurations, selection images): True where a
            configuration's model was right, configurations in trial order.
        correct_untouched: boolean (configurations, untouched images), the same models.
        cv_choice: row of the configuration chosen by cross-validation (an integer, NumPy's
            too, such as a search's ``best_index_``).
        sizes: selection-set sizes in images, each 1 to the selection images.
        confidence: the confidence level of the intervals.
        n_boot: bootstrap resamples, at least 100.
        seed: seed of the shuffle and of the bootstraps.

    Returns:
        One row per size (``OPTIMISM_COLUMNS``): scores as accuracies, differences in points.
    """
    sel = _correct_matrix("correct_selection", correct_selection)
    unt = _correct_matrix("correct_untouched", correct_untouched)
    if len(unt) != len(sel):
        raise ParameterError(
            "correct_untouched", f"{len(unt)} rows", f"one row per configuration ({len(sel)})"
        )
    if isinstance(cv_choice, np.integer):  # e.g. a search's best_index_
        cv_choice = int(cv_choice)
    cv_choice = check_int("cv_choice", cv_choice, minimum=0, maximum=len(sel) - 1)
    sizes = check_list("sizes", sizes, lambda n, v: check_int(n, v, 1, sel.shape[1]))
    confidence = check_fraction("confidence", confidence)
    n_boot = check_int("n_boot", n_boot, minimum=100)
    rng = np.random.default_rng(check_seed("seed", seed))
    order = rng.permutation(sel.shape[1])
    rows = []
    for n in sizes:
        subsets = order[: sel.shape[1] // n * n].reshape(-1, n)
        picks = sel[:, subsets].mean(axis=2).argmax(axis=0)  # the best score on each subset
        chosen = [sel[c, s] for c, s in zip(picks, subsets)]
        base = [sel[cv_choice, s] for s in subsets]
        # each untouched image's correctness, averaged over the subsets' choices
        picked = unt[picks].astype(float).mean(axis=0)
        cv_unt = unt[cv_choice].astype(float)
        optimism = _boot_means(chosen, n_boot, rng) - _boot_means([picked], n_boot, rng)
        gap = _boot_means(base, n_boot, rng) - _boot_means([cv_unt], n_boot, rng)
        lead = [c.astype(float) - b for c, b in zip(chosen, base)]
        beyond = _boot_means(lead, n_boot, rng) - _boot_means([picked - cv_unt], n_boot, rng)
        d = stats.seeds_paired_difference(
            np.repeat(unt[cv_choice][None], len(picks), axis=0),
            unt[picks],
            confidence,
            n_boot,
            int(rng.integers(2**31)),
        )
        values = {
            "optimism": 100 * (np.mean(chosen) - picked.mean()),
            "CV pick: gap": 100 * (np.mean(base) - cv_unt.mean()),
            "paired optimism": 100 * (np.mean(lead) - (picked - cv_unt).mean()),
        }
        row = {
            "images": n,
            "subsets": len(subsets),
            "same as CV": float(np.mean(picks == cv_choice)),
            "selected: selection score": float(np.mean(chosen)),
            "selected: untouched score": float(picked.mean()),
        }
        for name, draws in (
            ("optimism", optimism),
            ("CV pick: gap", gap),
            ("paired optimism", beyond),
        ):
            low, high = _interval(draws, confidence)
            row.update({name: float(values[name]), f"{name} low": low, f"{name} high": high})
            row[f"{name} verdict"] = _excludes(low, high)
        row.update(
            {
                "selected minus CV pick": d["difference"],
                "selected minus CV pick low": d["low"],
                "selected minus CV pick high": d["high"],
                "selected minus CV pick verdict": d["verdict"],
            }
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=OPTIMISM_COLUMNS)


def _excludes(low: float, high: float) -> str:
    """ "above zero", "below zero" or "includes zero": where an interval of a difference lies."""
    if low > 0:
        return "above zero"
    if high < 0:
        return "below zero"
    return "includes zero"


def _ci(row: pd.Series, name: str) -> str:
    """``"[low, high] points"`` of a column with ``low``/``high`` siblings, for a fact's context."""
    return f"95% interval [{row[f'{name} low']:.2g}, {row[f'{name} high']:.2g}] points"


def selection_summary(table: pd.DataFrame, loop_matches_refit: bool) -> pd.DataFrame:
    """The facts of the selection comparison: the whole selection split and its smallest subsets.

    Args:
        table: ``selection_optimism``'s table; its row with the most images is "the whole
            selection split", its row with the fewest "the smallest subsets".
        loop_matches_refit: whether the loop's fit of the CV pick scored exactly as the search's
            refit on the test images (the two are the same fit).

    Returns:
        The fact table.
    """
    whole = table.loc[table["images"].idxmax()]
    small = table.loc[table["images"].idxmin()]
    rows: list[tuple[str, Any, str]] = [
        (
            "loop's fit of the CV pick matches the refit",
            bool(loop_matches_refit),
            "same test score",
        ),
        ("selection images", int(whole["images"]), "the whole test split"),
        ("test-selected: test score", float(whole["selected: selection score"]), "what it reports"),
        (
            "test-selected: untouched score",
            float(whole["selected: untouched score"]),
            "the same model on the untouched split",
        ),
        (
            "test-selected is the CV pick",
            bool(whole["same as CV"] == 1.0),
            "the same configuration",
        ),
    ]
    measures = {  # fact name: the table's column
        "optimism": "optimism",
        "CV pick's gap": "CV pick: gap",
        "paired optimism": "paired optimism",
        "selected minus CV pick": "selected minus CV pick",
    }
    for label, row in (("whole test split", whole), ("smallest subsets", small)):
        for fact, column in measures.items():
            rows += [
                (f"{fact}, {label}", float(row[column]), _ci(row, column)),
                (f"{fact} verdict, {label}", str(row[f"{column} verdict"]), "its interval vs zero"),
            ]
    rows += [
        ("smallest subsets: images", int(small["images"]), "selection images per subset"),
        ("smallest subsets: subsets", int(small["subsets"]), "disjoint subsets of the test split"),
        (
            "smallest subsets: same as the CV pick",
            float(small["same as CV"]),
            "share of subsets choosing the CV pick",
        ),
    ]
    return facts_of(rows)


__all__ = ["OPTIMISM_COLUMNS", "check_selection_sizes", "selection_optimism", "selection_summary"]
