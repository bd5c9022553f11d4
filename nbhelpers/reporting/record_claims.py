"""Notebook 10's compression record in docs/papers.md: the published figures it is set against,
how ours is read from a record run, and its targets. ``claims`` adds these rows to its own. No
torch."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

RECORD_MLP = "10_compression_pipeline.record"  # notebook 10's compression record, LeNet-300-100
RECORD_CAFFE = "10_compression_pipeline.lenet5_caffe_record"  # the same for Caffe's LeNet-5

SWS = "Ullrich, Meeds, Welling 2017 (soft weight-sharing)"
BC = "Louizos, Ullrich, Welling 2017 (Bayesian compression)"
#: Soft weight-sharing's figures are from arXiv:1702.04008's Table 1, which no stored copy holds.
SWS_TEXT = (
    "as issue 31 quotes Table 1 of arXiv:1702.04008, not checked against a text copy; ours: "
    "notebook 10's record (3.8), the decoded compact artifact"
)
BC_TEXT = (
    "checked against the README of the authors' code release (KarenUllrich/"
    "Tutorial_BayesianCompressionForDL): BC-GHS at 1.0% error, 156x by pruning, 419x after "
    "precision reduction, which counts only the bits of the weights left (no positions, no "
    "biases); ours counts every byte of the artifact"
)


def record_ratio(rec: Mapping[str, Any]) -> tuple[float, float, float]:
    """Times smaller on disk of a run's compression record (``record``) than its dense file."""
    return float(rec["record"]["times_smaller"]), math.nan, math.nan


def record_error(rec: Mapping[str, Any]) -> tuple[float, float, float]:
    """Test error (%) of a run's decoded compression record, with its Wilson 95% interval."""
    r = rec["record"]
    return float(r["test_error_pct"]), float(r["error_low"]), float(r["error_high"])


def record_claim_rows() -> list[tuple[str, str, str, str, float, str, Callable, str]]:
    """The record's rows for ``claims.CLAIMS``, as the fields of a ``claims.Claim``.

    Returns:
        (paper, table, setting, metric, published, run, reader, checked) per row: soft
        weight-sharing's factor and error for each model, and Bayesian compression's largest
        LeNet-5 factor (another accounting, said in its row).
    """
    rows = []
    for model, run, ratio, error, note in (
        ("LeNet-300-100", RECORD_MLP, 64.0, 1.9, "; the issue quotes about 1.9%"),
        ("LeNet-5 (Caffe)", RECORD_CAFFE, 162.0, 1.0, "; the BC README lists SWS at 1.0%"),
    ):
        setting = f"{model} compressed (ours: the record)"
        rows += [
            (SWS, "Table 1", setting, "smaller on disk (x)", ratio, run, record_ratio, SWS_TEXT),
            (SWS, "Table 1", setting, "test error (%)", error, run, record_error, SWS_TEXT + note),
        ]
    setting = "LeNet-5 (Caffe), BC-GHS (ours: the record)"
    return rows + [(BC, "code README", setting, "smaller (x)", 419.0, RECORD_CAFFE, record_ratio,
                    BC_TEXT)]  # fmt: skip


def record_targets(records: Mapping[str, Mapping[str, Any]]) -> list[dict]:
    """The record's targets of each record run that recorded one (``lesson.record_targets``).

    Args:
        records: run name -> its records.

    Returns:
        ``nbhelpers.measure.targets.target`` dicts, named by model.
    """
    from nbhelpers.lessons.compression_pipeline import record_targets as lesson_targets

    out = []
    for key, label in ((RECORD_MLP, "LeNet-300-100"), (RECORD_CAFFE, "LeNet-5 (Caffe)")):
        r = records.get(key)
        if r and r.get("record"):
            out += [
                {**t, "name": f"Compression record, {label}: {t['name'].removeprefix('record: ')}"}
                for t in lesson_targets(r["record"], r["model"])
            ]
    return out
