"""Notebook 07's lesson code: the teacher's soft targets shown at several temperatures, and the
facts table with its wording.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from nbhelpers.measure.facts import fact_table
from nbhelpers.measure.targets import verdict_text
from nbhelpers.techniques.distillation import gap_closed, soft_targets


def teacher_table(
    logits: torch.Tensor, y: torch.Tensor, temperatures: Sequence[float]
) -> pd.DataFrame:
    """The teacher's soft targets of a few samples at several temperatures, one row per (sample, T).

    Args:
        logits: (k, classes) teacher logits of the chosen samples.
        y: (k,) their labels.
        temperatures: the temperatures to show.

    Returns:
        Columns sample, label, T and one column per class (probabilities).
    """
    rows = []
    for i in range(len(y)):
        for T in temperatures:
            p = soft_targets(logits[i : i + 1], T)[0]
            rows.append(
                {
                    "sample": i,
                    "label": int(y[i]),
                    "T": T,
                    **{str(c): float(v) for c, v in enumerate(p)},
                }
            )
    return pd.DataFrame(rows)


def summary(
    teacher_accuracy: float,
    params: Mapping[str, int],
    chosen: Mapping[str, Any],
    students: pd.DataFrame,
    pairs: pd.DataFrame,
    targets: Sequence[dict],
    n_test: int,
) -> pd.DataFrame:
    """This run's facts for the discussion of notebook 07 to point at by name.

    Args:
        teacher_accuracy: the teacher's test accuracy.
        params: parameters of "teacher", "student" and, if trained, "small student".
        chosen: the chosen setting, {"loss", "T", "alpha"}.
        students: ``StudentLab.summary()`` (sweep entries, whose names start with "sweep", are
            skipped).
        pairs: ``StudentLab.compare`` rows, index "student - reference".
        targets: the notebook's targets (gap closed first).
        n_test: test images (one image is ``100 / n_test`` points).

    Returns:
        A ``facts.fact_table`` (value, unit, context), 4 significant digits; "gap closed: target
        met" is the target's verdict ("yes", "NO", with "(goal in the interval)" when its
        interval spans the goal).
    """
    rows = [
        ("teacher: test accuracy", teacher_accuracy, "", "one model"),
        (
            "teacher / student parameters",
            params["teacher"] / params["student"],
            "x",
            f"{params['teacher']:,} / {params['student']:,}",
        ),
    ]
    if "small student" in params:
        rows.append(
            (
                "teacher / small student parameters",
                params["teacher"] / params["small student"],
                "x",
                f"{params['teacher']:,} / {params['small student']:,}",
            )
        )
    rows.append(
        (
            "chosen setting",
            f"{chosen['loss']} T={chosen['T']:g} alpha={chosen['alpha']:g}",
            "",
            "best validation accuracy of the sweep",
        )
    )
    for name, r in students.iterrows():
        if not str(name).startswith("sweep"):
            sd = "" if r["seeds"] < 2 else f", sd {r['std']:.2g}"
            rows.append(
                (f"{name}: test accuracy", r["mean"], "", f"mean of {r['seeds']} seed(s){sd}")
            )
    for name, r in pairs.iterrows():
        rows.append(
            (name, r["difference"], "points", f"[{r['low']:.3g}, {r['high']:.3g}]: {r['verdict']}")
        )
    g = targets[0]
    rows += [
        (
            "gap closed",
            g["measured"],
            "",
            f"[{g['low']:.3g}, {g['high']:.3g}]; goal >= {g['threshold']:g}",
        ),
        (
            "gap closed: target met",
            verdict_text(g),
            "",
            f"lesson's goal >= {g['threshold']:g}; interval: row gap closed",
        ),
    ]
    for plain, distilled in (("plain", "distilled on views"), ("small plain", "small distilled")):
        if plain in students.index and distilled in students.index:
            closed = gap_closed(
                students.loc[plain, "mean"], students.loc[distilled, "mean"], teacher_accuracy
            )
            rows.append((f"{distilled}: gap closed", closed, "", f"vs {plain}, means over seeds"))
    rows.append(("one test image", 100.0 / n_test, "points", f"of {n_test:,} test images"))
    return fact_table(rows, digits=4)
