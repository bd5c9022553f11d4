"""The transformer leaderboard: rows, ratios and intervals as notebooks 12 and 14 record them."""

import math

import pandas as pd
import pytest

from nbhelpers.measure import lm_leaderboard as lb


def _lat(model, b1, b32):
    return [
        {"model": model, "batch_size": 1, "median_ms": b1},
        {"model": model, "batch_size": 32, "median_ms": b32},
    ]


def _quant(model, bpc, change, low, high, verdict, nbytes, ratio):
    return dict(
        model=model,
        bpc=bpc,
        change=change,
        low=low,
        high=high,
        verdict=verdict,
        bytes=nbytes,
        fp32_bytes=4000,
        ratio=ratio,
    )


C12 = {
    "baseline_bpc": 2.30,
    "baseline_bpc_interval": [2.29, 2.31],
    "parameters": 1000,
    "quantization": [
        _quant("dynamic int8", 2.304, 0.004, 0.002, 0.006, "worse", 1000, 4.0),
        _quant("int4 g32", 2.31, 0.01, 0.008, 0.012, "worse", 625, 6.4),
    ],
    "ort_quantization": [
        dict(
            model="ORT fp32",
            bpc=2.30,
            change=0.0,
            low=0.0,
            high=0.0,
            verdict="within noise",
            weight_bytes=4000,
            weight_ratio=1.0,
        ),
        dict(
            model="ORT dynamic int8",
            bpc=2.301,
            change=0.001,
            low=-0.001,
            high=0.003,
            verdict="within noise",
            weight_bytes=1010,
            weight_ratio=3.96,
        ),
    ],
    "latency_speed_ms": _lat("fp32", 1.0, 8.0)
    + _lat("dynamic int8", 0.8, 4.0)
    + _lat("ORT dynamic int8", 0.5, 5.0),
    "latency_generation": [
        {"model": "fp32", "chars_per_s": 100.0},
        {"model": "dynamic int8", "chars_per_s": 150.0},
    ],
    "pruning": [
        dict(
            sparsity=0.5,
            measured_sparsity=0.5,
            bpc=2.305,
            change=0.005,
            low=0.001,
            high=0.009,
            verdict="worse",
        ),
    ],
    "semi_structured": [
        dict(
            pattern="2:4", stage="one-shot", bpc=2.5, change=0.2, low=0.1, high=0.3, verdict="worse"
        ),
        dict(
            pattern="2:4",
            stage="fine-tuned",
            bpc=2.34,
            change=0.04,
            low=0.03,
            high=0.05,
            verdict="worse",
        ),
        dict(
            pattern="50% unstructured",
            stage="fine-tuned",
            bpc=2.3,
            change=0.0,
            low=-0.1,
            high=0.1,
            verdict="within noise",
        ),
    ],
    "structured": [
        dict(
            model="fine-tuned",
            bpc=2.31,
            change=0.01,
            low=0.0,
            high=0.02,
            verdict="worse",
            parameters=800,
        ),
    ],
    "latency_structured_ms": _lat("dense", 1.0, 8.0) + _lat("heads + MLP pruned", 1.0, 6.0),
}

C14 = {
    "bits": [
        dict(model="teacher", bpc=2.3, low=2.29, high=2.31),
        dict(model="student alone", bpc=2.6, low=2.59, high=2.61),
        dict(model="distilled T=1", bpc=2.5, low=2.49, high=2.51),
        dict(model="distilled T=4", bpc=2.55, low=2.54, high=2.56),
    ],
    "distillation_comparisons": [
        dict(
            model="student alone",
            vs_teacher=0.3,
            vs_teacher_low=0.28,
            vs_teacher_high=0.32,
            vs_teacher_verdict="worse",
        ),
        dict(
            model="distilled T=1",
            vs_teacher=0.2,
            vs_teacher_low=0.18,
            vs_teacher_high=0.22,
            vs_teacher_verdict="worse",
        ),
        dict(
            model="distilled T=4",
            vs_teacher=0.25,
            vs_teacher_low=0.2,
            vs_teacher_high=0.3,
            vs_teacher_verdict="worse",
        ),
    ],
    "chosen_temperature": 1.0,
    "parameter_share": 0.25,
    "latency_generation": [
        {"model": "teacher", "chars_per_s": 100.0},
        {"model": "student alone", "chars_per_s": 300.0},
        {"model": "distilled T=1", "chars_per_s": 250.0},
    ],
}

RECORDS = {lb.COMPRESSION: C12, lb.DISTILLATION: C14}


def test_compression_rows_ratios_against_the_same_run():
    board = lb.build(RECORDS).set_index("model")
    base = board.loc["fp32 baseline"]
    assert bool(base["is_baseline"]) and base["bpc_low"] == 2.29 and base["bytes"] == 4000
    dyn = board.loc["dynamic int8"]
    assert dyn["speedup_b1"] == pytest.approx(1.0 / 0.8)
    assert dyn["speedup_b32"] == pytest.approx(2.0)
    assert dyn["speedup_generation"] == pytest.approx(1.5)
    assert (dyn["change_bpc"], dyn["change_low"], dyn["change_high"]) == (0.004, 0.002, 0.006)
    assert dyn["size_ratio"] == 4.0 and dyn["verdict"] == "worse"
    assert math.isnan(board.loc["int4 g32", "speedup_b32"])  # not timed: left blank
    ort = board.loc["ORT dynamic int8"]
    assert ort["speedup_b32"] == pytest.approx(8.0 / 5.0) and ort["bytes"] == 1010
    assert "ORT fp32" not in board.index  # the exporter's check, not a compressed model
    assert board.loc["magnitude 50%, fine-tuned", "weights_kept"] == 0.5
    semi = board.loc["2:4, fine-tuned"]
    assert semi["change_bpc"] == 0.04 and semi["weights_kept"] == 0.5  # the one-shot row is left
    slim = board.loc["heads + MLP pruned, fine-tuned"]
    assert slim["size_ratio"] == pytest.approx(1.25) and slim["weights_kept"] == pytest.approx(0.8)
    assert slim["speedup_b32"] == pytest.approx(8.0 / 6.0) and slim["speedup_b1"] == 1.0


def test_distillation_rows_against_the_teacher():
    board = lb.build(RECORDS)
    rows = board[board["notebook"] == lb.DISTILLATION].set_index("model")
    assert list(rows.index) == ["teacher", "student alone", "distilled T=1"]  # the chosen T only
    d = rows.loc["distilled T=1"]
    assert (d["change_bpc"], d["change_low"], d["change_high"]) == (0.2, 0.18, 0.22)
    assert d["size_ratio"] == 4.0 and d["speedup_generation"] == pytest.approx(2.5)
    assert board["is_baseline"].sum() == 2


def test_readable_and_sections():
    text = lb.readable(lb.build(RECORDS)).set_index("model")
    assert text.loc["dynamic int8", "change, bits/char [95% CI]"] == "+0.0040 [+0.0020, +0.0060]"
    assert text.loc["fp32 baseline", "bits/char [95% CI]"] == "2.3000 [2.2900, 2.3100]"
    assert text.loc["int4 g32", "speed-up b32"] == ""
    assert text.loc["heads + MLP pruned, fine-tuned", "weights kept"] == "80%"
    html = lb.html_section(RECORDS)
    assert "heads + MLP pruned, fine-tuned" in html and "<table" in html
    assert "have not run yet" in lb.html_section({})
    assert lb.build({}).empty
    broken = lb.html_section({lb.COMPRESSION: {**C12, "latency_speed_ms": [{"x": 1}]}})
    assert "could not build the board" in broken


def test_only_one_notebook_run():
    board = lb.build({lb.DISTILLATION: C14})
    assert set(board["notebook"]) == {lb.DISTILLATION}
    assert isinstance(lb.readable(board), pd.DataFrame)


def test_benchmark_doc_and_index_show_the_board(tmp_path):
    from nbhelpers.reporting.bench import markdown
    from nbhelpers.reporting.runner import RunResult

    results = [RunResult(stem, "ok", 1.0, records=rec) for stem, rec in RECORDS.items()]
    text = markdown(results, 2.0, 1, {"cpu": "Test CPU"}, "empty")
    assert "## The transformer language model" in text
    assert (
        "| 12_transformer_compression | dynamic int8 | 2.3040 | +0.0040 [+0.0020, +0.0060] |"
        in text
    )
    from nbhelpers.reporting.runner import save_run, write_index

    for r in results:
        save_run(tmp_path, r)
    index = write_index(tmp_path).read_text()
    assert "Leaderboard: the transformer language model" in index and "distilled T=1" in index
