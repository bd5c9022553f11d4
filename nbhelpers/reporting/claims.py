"""The papers' MNIST figures this project reproduces (``CLAIMS``), how each is read from a run's
records, and the profile's targets (``profile_targets``); ``paper`` runs the notebooks and writes
docs/papers.md from them. No torch."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from nbhelpers.measure.targets import target
from nbhelpers.reporting.figure1_claims import bn_above_share, figure1_context
from nbhelpers.reporting.hinton_claims import (
    Figure,
    accuracy_errors,
    hinton_error_targets,
    hinton_gap_target,
    student_errors,
)
from nbhelpers.reporting.record_claims import record_claim_rows, record_targets

CAFFE = "04_weight_pruning.lenet5_caffe"  # Han et al.'s LeNet-5 through notebook 04
DC_CAFFE = "10_compression_pipeline.lenet5_caffe"  # Deep Compression's LeNet-5 through 10


@dataclass(frozen=True)
class Claim:
    """One published MNIST figure and where this project measures it."""

    paper: str
    table: str
    setting: str
    metric: str
    published: float
    notebook: str
    ours: Callable[[Mapping[str, Any]], Figure] | None
    checked: str


def _rows(rec: Mapping[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(rec["comparison"]).set_index("model")


def deep_compression_row(rec: Mapping[str, Any]) -> str:
    """The row of a notebook-10 run to set beside Deep Compression's figures: the like-for-like
    model (the baseline itself pruned, int8, entropy-coded, as Han et al. compress LeNet-300-100),
    or the final stage for a run recorded before that row existed.

    Args:
        rec: the run's records (``comparison``, ``final_stage``, ``like_for_like`` when recorded).

    Returns:
        The comparison row's name.
    """
    like = rec.get("like_for_like")
    return like if like and like in set(_rows(rec).index) else rec["final_stage"]


def error_of(rec: Mapping[str, Any], model: str) -> Figure:
    """Test error (%) of a model of the recorded comparison, with its Wilson 95% interval.

    Args:
        rec: the notebook's records (``comparison``).
        model: the row name.

    Returns:
        (error, low, high) in percent.
    """
    r = _rows(rec).loc[model]
    return 100 * (1 - r["accuracy"]), 100 * (1 - r["accuracy_high"]), 100 * (1 - r["accuracy_low"])


def params_ratio(rec: Mapping[str, Any], model: str) -> Figure:
    """Parameters of the comparison's baseline over the non-zero parameters of a model ("12x")."""
    rows = _rows(rec)
    return (
        rows.loc[rec["comparison_baseline"], "params"] / rows.loc[model, "nonzero"],
        math.nan,
        math.nan,
    )


def size_ratio(rec: Mapping[str, Any], model: str) -> Figure:
    """Bytes of the comparison's baseline over the bytes of a model's artifact ("40x")."""
    return float(_rows(rec).loc[model, "size_ratio"]), math.nan, math.nan


def _baseline(rec: Mapping[str, Any]) -> str:
    return rec["comparison_baseline"]


HAN15 = "Han, Pool, Tran, Dally 2015"
HINTON = "Hinton, Vinyals, Dean 2015"
DISTIL = "07_knowledge_distillation"
HINTON_TEXT = (
    "checked against the text of section 3 (arXiv:1503.02531): 67, 146 and 74 test errors; "
    "the distilled net saw no jittered images"
)
DC16 = "Han, Mao, Dally 2016 (Deep Compression)"
#: Han, Pool, Tran, Dally, "Learning both weights and connections for efficient neural networks"
#: (NeurIPS 2015) is arXiv:1506.02626; Deep Compression (Han, Mao, Dally, ICLR 2016) is
#: arXiv:1510.00149.
HAN15_TABLE = "Table 1 of arXiv:1506.02626"
UNCHECKED = HAN15_TABLE + ", not checked against a text copy (the figure as widely quoted)"
DC_TABLE = "checked against the text of the paper's Table 1 (arXiv:1510.00149v5)"
#: A Han et al. 2015 reference row that Deep Compression's Table 1 repeats, checked there.
DC_REFERENCE = (
    HAN15_TABLE + "; the same figure is Deep Compression's reference row, checked against the "
    "text of its Table 1 (arXiv:1510.00149v5)"
)

#: Published figures, and the functions that read ours from a notebook's records.
CLAIMS = [
    Claim(
        HAN15,
        "Table 1",
        "LeNet-300-100 dense",
        "test error (%)",
        1.64,
        "04_weight_pruning",
        lambda r: error_of(r, _baseline(r)),
        DC_REFERENCE,
    ),
    Claim(
        HAN15,
        "Table 1",
        "LeNet-300-100 pruned",
        "test error (%)",
        1.59,
        "04_weight_pruning",
        lambda r: error_of(r, r["pruned_model"]),
        UNCHECKED,
    ),
    Claim(
        HAN15,
        "Table 1",
        "LeNet-300-100 pruned",
        "fewer parameters (x)",
        12.0,
        "04_weight_pruning",
        lambda r: params_ratio(r, r["pruned_model"]),
        "267K to 22K; " + UNCHECKED,
    ),
    Claim(
        DC16,
        "Table 1",
        "LeNet-300-100 dense",
        "test error (%)",
        1.64,
        "10_compression_pipeline",
        lambda r: error_of(r, _baseline(r)),
        DC_TABLE,
    ),
    Claim(
        DC16,
        "Table 1",
        "LeNet-300-100 compressed",
        "test error (%)",
        1.58,
        "10_compression_pipeline",
        lambda r: error_of(r, deep_compression_row(r)),
        DC_TABLE,
    ),
    Claim(
        DC16,
        "Table 1",
        "LeNet-300-100 compressed",
        "smaller on disk (x)",
        40.0,
        "10_compression_pipeline",
        lambda r: size_ratio(r, deep_compression_row(r)),
        "1070 KB to 27 KB; " + DC_TABLE,
    ),
    Claim(
        HAN15,
        "Table 1",
        "LeNet-5 (Caffe, 20-50-500) dense",
        "test error (%)",
        0.80,
        CAFFE,
        lambda r: error_of(r, _baseline(r)),
        DC_REFERENCE,
    ),
    Claim(
        HAN15,
        "Table 1",
        "LeNet-5 (Caffe) pruned",
        "test error (%)",
        0.77,
        CAFFE,
        lambda r: error_of(r, r["pruned_model"]),
        UNCHECKED,
    ),
    Claim(
        HAN15,
        "Table 1",
        "LeNet-5 (Caffe) pruned",
        "fewer parameters (x)",
        12.0,
        CAFFE,
        lambda r: params_ratio(r, r["pruned_model"]),
        "431K to 36K; " + UNCHECKED,
    ),
    Claim(
        DC16,
        "Table 1",
        "LeNet-5 (Caffe) dense",
        "test error (%)",
        0.80,
        DC_CAFFE,
        lambda r: error_of(r, _baseline(r)),
        DC_TABLE,
    ),
    Claim(
        DC16,
        "Table 1",
        "LeNet-5 (Caffe) compressed",
        "test error (%)",
        0.74,
        DC_CAFFE,
        lambda r: error_of(r, deep_compression_row(r)),
        DC_TABLE,
    ),
    Claim(
        DC16,
        "Table 1",
        "LeNet-5 (Caffe) compressed",
        "smaller on disk (x)",
        39.0,
        DC_CAFFE,
        lambda r: size_ratio(r, deep_compression_row(r)),
        "1720 KB to 44 KB; " + DC_TABLE,
    ),
    Claim(
        HINTON,
        "section 3",
        "1200-1200 teacher (dropout, 2-pixel jitter)",
        "test errors (of 10,000)",
        67,
        DISTIL,
        lambda r: accuracy_errors(r, float(r["teacher_test_accuracy"])),
        HINTON_TEXT,
    ),
    Claim(
        HINTON,
        "section 3",
        "800-800 student, plain",
        "test errors (of 10,000)",
        146,
        DISTIL,
        lambda r: student_errors(r, "plain"),
        HINTON_TEXT,
    ),
    Claim(
        HINTON,
        "section 3",
        "800-800 student, distilled at T = 20",
        "test errors (of 10,000)",
        74,
        DISTIL,
        lambda r: student_errors(r, "distilled"),
        HINTON_TEXT,
    ),
    Claim(
        "Ioffe, Szegedy 2015",
        "Figure 1(a)",
        "3 x 100 sigmoid units, batches of 60",
        "share of the curve with BN above no-BN",
        1.0,
        "08_batch_normalization",
        bn_above_share,
        "checked against section 4.1 (arXiv:1502.03167): 3 x 100 sigmoid units, 50,000 steps of "
        "60, 'the batch-normalized network enjoys the higher test accuracy' (the curves carry no "
        "number); ours: test accuracy every SIG_EVAL_EVERY steps at the best no-BN rate, mean over "
        "seeds (runs before it recorded Figure 1: validation accuracy per epoch)",
    ),
]


CLAIMS += [Claim(*row) for row in record_claim_rows()]  # notebook 10's compression record


def claims_table(
    records: Mapping[str, Mapping[str, Any]], seconds: Mapping[str, float]
) -> pd.DataFrame:
    """Every claim with the published figure, ours (with its 95% interval) and the difference.

    Args:
        records: notebook stem -> its records (from the paper runs).
        seconds: notebook stem -> its run time.

    Returns:
        One row per claim: paper, table, setting, metric, published, ours, low, high, difference,
        notebook, seconds, checked; ours is NaN where the notebook did not run or the claim is not
        reproduced yet.
    """
    rows = []
    for c in CLAIMS:
        ours = (math.nan, math.nan, math.nan)
        if c.ours is not None and c.notebook in records:
            try:
                ours = tuple(float(v) for v in c.ours(records[c.notebook]))
            except (KeyError, TypeError, ValueError):  # the notebook did not record it
                pass
        checked = c.checked
        rec = records.get(c.notebook)
        if c.paper == DC16 and rec and "final_stage" in rec and "comparison" in rec:
            checked = (
                "ours: the full stack, run recorded before the like-for-like row; "
                if deep_compression_row(rec) == rec["final_stage"]
                else "ours: the like-for-like row; "
            ) + checked
        rows.append(
            {
                "paper": c.paper,
                "table": c.table,
                "setting": c.setting,
                "metric": c.metric,
                "published": c.published,
                "ours": ours[0],
                "low": ours[1],
                "high": ours[2],
                "difference": ours[0] - c.published,
                "notebook": c.notebook,
                "seconds": seconds.get(c.notebook, math.nan),
                "checked": checked,
            }
        )
    return pd.DataFrame(rows)


def _pruning_targets(p: Mapping[str, Any], label: str, dense_error: float) -> list[dict]:
    """Han et al.'s three targets for one model pruned by notebook 04: the dense error within 0.15
    points of the paper's, 12x fewer parameters, no significant loss."""
    dense = error_of(p, _baseline(p))
    row = _rows(p).loc[p["pruned_model"]]
    loss, lo, hi = (
        -float(row["accuracy_delta_points"]),
        -float(row["delta_high_points"]),
        -float(row["delta_low_points"]),
    )
    return [
        target(
            f"{label} dense error within 0.15 points of {dense_error:.2f}%",
            abs(dense[0] - dense_error),
            "<=",
            0.15,
            "points",
            "|ours - published|",
        ),
        target(
            f"{label} pruned: fewer parameters",
            params_ratio(p, p["pruned_model"])[0],
            ">=",
            12,
            "x",
        ),
        target(
            f"{label} pruned at 12x: no significant loss (lower end of the loss's paired 95% "
            "interval)",
            lo,
            "<=",
            0.0,
            "points",
            f"loss {loss:+.2f} [{lo:+.2f}, {hi:+.2f}] points, McNemar p "
            f"{float(row['p_mcnemar']):.3g}",
        ),
    ]


def profile_targets(records: Mapping[str, Mapping[str, Any]]) -> list[dict]:
    """The paper profile's targets, from the records of its runs (absent ones are skipped).

    Args:
        records: run name -> its records.

    Returns:
        ``nbhelpers.measure.targets.target`` dicts.
    """
    out = []
    for key, label, dense_error in (
        ("04_weight_pruning", "LeNet-300-100", 1.64),
        (CAFFE, "LeNet-5 (Caffe)", 0.80),
    ):
        p = records.get(key)
        if p and "pruned_model" in p:
            out += _pruning_targets(p, label, dense_error)
    k = records.get(DISTIL)
    if k and "targets" in k:
        out += [hinton_gap_target(k["targets"][0]), *hinton_error_targets(k)]
    b = records.get("08_batch_normalization")
    if b and "sigmoid_curves" in b:
        out.append(
            target(
                "Ioffe and Szegedy: BN's curve above the no-BN curve over the whole run",
                bn_above_share(b)[0],
                ">=",
                1.0,
                "",
                figure1_context(b),
            )
        )
    for key, label, ratio in (
        ("10_compression_pipeline", "Deep Compression pipeline", 40),
        (DC_CAFFE, "Deep Compression pipeline, LeNet-5 (Caffe)", 39),
    ):
        d = records.get(key)
        if d and "final_stage" in d:
            out += _deep_compression_targets(d, label, ratio)
    return out + record_targets(records)


def _deep_compression_targets(d: Mapping[str, Any], label: str, ratio: float) -> list[dict]:
    """Deep Compression's size and loss targets for one notebook-10 run, on the row
    ``deep_compression_row`` picks (its name says which)."""
    name = deep_compression_row(d)
    row = _rows(d).loc[name]
    if name == d["final_stage"]:  # said in the row's name, which the doc shows
        label += " (full stack: run recorded before the like-for-like row)"
    else:
        label += " (like-for-like row)"
    return [
        target(f"{label}: smaller on disk", float(row["size_ratio"]), ">=", ratio, "x", name),
        target(
            f"{label}: loss against its dense model",
            -float(row["accuracy_delta_points"]),
            "<=",
            0.2,
            "points",
            interval=(-float(row["delta_high_points"]), -float(row["delta_low_points"])),
        ),
    ]
