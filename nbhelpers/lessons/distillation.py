"""Notebook 07's lesson code: the teacher's recipe read from ``TEACHER_RECIPE``, the teacher's
soft targets shown at several temperatures, the learning curves and epochs against the papers',
and the facts table with its wording.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any

import pandas as pd
import torch

from nbhelpers.core.params import ParameterError, check_float, check_int
from nbhelpers.measure.facts import fact_table
from nbhelpers.measure.stats import wilson_interval
from nbhelpers.measure.targets import verdict_text
from nbhelpers.techniques.distillation import TeacherRecipe, gap_closed, soft_targets

#: ``TEACHER_RECIPE``'s keys and their defaults, the lesson's teacher: Adam at 1e-3 decayed by a
#: cosine to 0, batches of 64, no dropout, jitter or weight constraint (``TeacherRecipe``'s fields
#: and the hidden layers' dropout, the starting rate and the batch size).
RECIPE_DEFAULTS: dict[str, Any] = {
    "dropout": 0.0,
    "lr": 1e-3,
    "batch_size": 64,
    **asdict(TeacherRecipe()),
}


def teacher_recipe(
    params: Mapping[str, Any], name: str = "TEACHER_RECIPE"
) -> tuple[TeacherRecipe, dict[str, Any]]:
    """Check notebook 07's ``TEACHER_RECIPE`` and split it into the recipe and the rest.

    Args:
        params: a dict with any of ``RECIPE_DEFAULTS``' keys (the others keep their defaults).
        name: the parameter's name, for the errors.

    Returns:
        (``TeacherRecipe``, {"dropout", "lr", "batch_size"}).

    Raises:
        ParameterError: not a dict, an unknown key, or a bad value (named ``name['key']``).
    """
    if not isinstance(params, Mapping):
        raise ParameterError(name, params, f"a dict with keys among {sorted(RECIPE_DEFAULTS)}")
    unknown = sorted(set(params) - set(RECIPE_DEFAULTS))
    if unknown:
        raise ParameterError(name, unknown, f"keys among {sorted(RECIPE_DEFAULTS)}")
    merged = {**RECIPE_DEFAULTS, **params}
    check_float(f"{name}['dropout']", merged["dropout"], 0.0, 1.0, high_inclusive=False)
    check_float(f"{name}['lr']", merged["lr"], 0.0, 100.0, low_inclusive=False)
    check_int(f"{name}['batch_size']", merged["batch_size"], minimum=1)
    recipe = TeacherRecipe(**{f.name: merged[f.name] for f in fields(TeacherRecipe)})
    rest = {k: merged[k] for k in ("dropout", "lr", "batch_size")}
    return recipe.check(name), rest


def learning_curves(
    teacher_history: pd.DataFrame, views: int, students: pd.DataFrame
) -> pd.DataFrame:
    """Validation error after each epoch of the teacher and the students, in one long table.

    Args:
        teacher_history: the teacher's ``train.fit`` history (``val_accuracy`` per pass over the
            views).
        views: the views per training image (one teacher epoch is ``views`` passes' worth).
        students: ``StudentLab.curves()`` of students trained on the training images.

    Returns:
        Columns model, seed, epoch (passes' worth of the training images), val_error (percent).
    """
    teacher = pd.DataFrame(
        {
            "model": "teacher",
            "seed": 0,
            "epoch": teacher_history["epoch"].to_numpy() * views,
            "val_error": 100 * (1 - teacher_history["val_accuracy"].to_numpy()),
        }
    )
    rest = students.rename(columns={"student": "model"}).assign(
        val_error=lambda d: 100 * d["val_error"].astype(float)
    )
    return pd.concat([teacher, rest[list(teacher.columns)]], ignore_index=True)


def epochs_table(
    teacher_epochs: int, views: int, student_epochs: int, curves: pd.DataFrame
) -> pd.DataFrame:
    """How long each model trained, how its validation error ended, and what the papers say.

    Args:
        teacher_epochs: the teacher's passes over the views.
        views: views per training image.
        student_epochs: the students' passes over the training images.
        curves: ``learning_curves`` (empty val errors give NaN columns).

    Returns:
        Index model; columns epochs (passes' worth of the training images), lowest validation
        error (%), at epoch, last validation error (%), the papers.
    """
    papers = {
        "teacher": "not stated in Hinton et al. 2015; the 2012 recipe's momentum ramp alone "
        "lasts 500 epochs (as third-party reproductions give it)",
    }
    rows = []
    for model, epochs in [("teacher", teacher_epochs * views)] + [
        (m, student_epochs) for m in dict.fromkeys(curves["model"]) if m != "teacher"
    ]:
        c = curves[curves["model"] == model].groupby("epoch")["val_error"].mean()
        best = c.idxmin() if c.notna().any() else math.nan
        rows.append(
            {
                "model": model,
                "epochs": epochs,
                "lowest val error (%)": c.min(),
                "at epoch": best,
                "last val error (%)": c.iloc[-1] if len(c) else math.nan,
                "the papers": papers.get(model, "not stated in Hinton et al. 2015"),
            }
        )
    return pd.DataFrame(rows).set_index("model")


def run_facts(
    teacher_accuracy: float,
    students: pd.DataFrame,
    n_test: int,
    epochs: pd.DataFrame,
    names: Sequence[str] = ("plain", "distilled"),
) -> pd.DataFrame:
    """Test errors with their Wilson intervals and each model's epochs, for the Discussion.

    Args:
        teacher_accuracy: the teacher's test accuracy.
        students: ``StudentLab.summary()`` (mean over seeds).
        n_test: test images.
        epochs: ``epochs_table``.
        names: the students to state.

    Returns:
        A ``facts.fact_table``: "<model>: test errors" (with its interval; Hinton et al.'s
        figures beside them apply to the full official MNIST only), "<model>: epochs" and
        "<model>: epoch of its lowest validation error".
    """
    published = {"teacher": 67, "plain": 146, "distilled": 74}
    accuracies = {"teacher": teacher_accuracy, **{n: students.loc[n, "mean"] for n in names}}
    rows = []
    for model, acc in accuracies.items():
        wrong = int(round((1 - float(acc)) * n_test))
        lo, hi = wilson_interval(wrong, n_test)
        paper = f"; Hinton et al. {published[model]}" if model in published else ""
        rows.append(
            (
                f"{model}: test errors",
                wrong,
                "",
                f"[{lo * n_test:.0f}, {hi * n_test:.0f}] of {n_test:,}{paper}",
            )
        )
    for model, r in epochs.iterrows():
        rows.append((f"{model}: epochs", r["epochs"], "", "passes' worth of training images"))
        rows.append(
            (
                f"{model}: epoch of its lowest validation error",
                r["at epoch"],
                "",
                f"of {r['epochs']}; last {r['last val error (%)']:.3g}% error",
            )
        )
    return fact_table(rows, digits=4)


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
