"""nbhelpers.measure.leaderboard: one table from the comparisons recorded by several notebooks."""

import pandas as pd
import pytest

from nbhelpers.measure.leaderboard import build, html_section, pareto_front, safe_html_section


def _row(model, acc, nbytes, b256, **extra):
    return {
        "model": model,
        "accuracy": acc,
        "params": 100,
        "nonzero": 100,
        "bytes": nbytes,
        "latency_ms_b1": 0.1,
        "latency_ms_b256": b256,
        **extra,
    }


RECORDS = {
    "06_quantization": {
        "comparison": [
            _row(
                "fp32", 0.93, 1000, 2.0, size_ratio=1.0, speedup_b256=1.0, accuracy_delta_points=0.0
            ),
            _row(
                "int8", 0.92, 250, 1.0, size_ratio=4.0, speedup_b256=2.0, accuracy_delta_points=-1.0
            ),
        ],
        "comparison_baseline": "fp32",
    },
    "04_weight_pruning": {
        "comparison": [
            _row("dense", 0.93, 1000, 2.0, size_ratio=1.0),
            _row("pruned", 0.925, 90, 2.1, size_ratio=11.1),
        ],
        "comparison_baseline": "dense",
    },
    "00_baseline": {"mlp_test_accuracy": 0.93},  # no comparison: not on the board
}


def test_build_gathers_all_rows_in_notebook_order():
    board = build(RECORDS)
    assert board[["notebook", "model", "is_baseline"]].values.tolist() == [
        ["04_weight_pruning", "dense", True],
        ["04_weight_pruning", "pruned", False],
        ["06_quantization", "fp32", True],
        ["06_quantization", "int8", False],
    ]
    assert board.loc[3, "size_ratio"] == 4.0 and board.loc[3, "speedup_b256"] == 2.0
    assert board.loc[1, "size_ratio"] == pytest.approx(11.1)


def test_html_has_table_and_picture():
    text = html_section(build(RECORDS))
    assert text.count("<tr") == 5 and "data:image/png;base64," in text and "int8" in text
    assert "No notebook" in html_section(build({}))


def test_bad_baseline_is_reported_not_raised():
    bad = {"x": {"comparison": [_row("a", 0.9, 1, 1)], "comparison_baseline": "zzz"}}
    with pytest.raises(ValueError, match="comparison_baseline 'zzz'"):
        build(bad)
    assert "could not build the leaderboard" in safe_html_section(bad)


def test_benchmark_markdown_lists_targets_speedups_and_times():
    from nbhelpers.measure.targets import target
    from nbhelpers.reporting.bench import markdown
    from nbhelpers.reporting.runner import RunResult

    recs = dict(
        RECORDS["06_quantization"],
        targets=[
            target("int8 speed-up b256", 2.0, ">=", 2, "x"),
            target("int8 loss", 1.0, "<=", 0.5, "points"),
        ],
    )
    text = markdown(
        [
            RunResult("06_quantization", "ok", 12.0, records=recs),
            RunResult("99_broken", "failed", 3.0, error="ValueError: x"),
        ],
        15.2,
        1,
        {"cores": "2", "cpu": "Test CPU", "python": "3.11", "torch": "2.13.0", "os": "linux"},
        "empty",
    )
    assert "(reason and citation there): 1 of 2 met" in text
    assert "| 06_quantization | int8 speed-up b256 | 2 x | >= 2 x | yes |" in text
    assert "| 06_quantization | int8 loss | 1 points | <= 0.5 points | **no** |" in text
    assert (
        "| 06_quantization | int8 | -1.00 |  |  | 4.00x |  | 2.00x |" in text and "Test CPU" in text
    )
    assert "| 99_broken | failed | 3.0 | ValueError: x |" in text and "Whole suite: 15 s" in text
    assert "Model cache at the start: empty." in text


def test_cache_files_counts_nested_files(tmp_path):
    from nbhelpers.reporting.bench import cache_files

    assert cache_files(tmp_path / "absent") == 0
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.pt").write_bytes(b"1")
    (tmp_path / "sub" / "b.json").write_text("{}")
    assert cache_files(tmp_path) == 2


def test_pareto_front():
    df = pd.DataFrame({"bytes": [100, 50, 50, 10, 200], "accuracy": [0.9, 0.92, 0.8, 0.85, 0.95]})
    assert pareto_front(df).index.tolist() == [3, 1, 4]


def test_readable_shows_intervals_and_verdicts():
    from nbhelpers.measure.leaderboard import readable

    rec = {
        "x": {
            "comparison": [
                _row(
                    "base",
                    0.95,
                    1000,
                    2.0,
                    accuracy_low=0.9456,
                    accuracy_high=0.9541,
                    verdict="baseline",
                ),
                _row(
                    "small",
                    0.948,
                    100,
                    1.0,
                    accuracy_low=0.9435,
                    accuracy_high=0.9522,
                    accuracy_delta_points=-0.2,
                    delta_low_points=-0.41,
                    delta_high_points=0.01,
                    p_mcnemar=0.061,
                    verdict="within noise",
                    size_ratio=10.0,
                ),
            ],
            "comparison_baseline": "base",
        }
    }
    shown = readable(build(rec))
    assert shown.loc[0, "accuracy [95% CI]"] == "0.9500 [0.9456, 0.9541]"
    assert shown.loc[0, "change, points [95% CI]"] == "" and shown.loc[0, "verdict"] == "baseline"
    assert shown.loc[1, "change, points [95% CI]"] == "-0.20 [-0.41, +0.01]"
    assert shown.loc[1, "verdict"] == "within noise" and shown.loc[1, "McNemar p"] == "0.061"
    assert shown.loc[1, "times smaller"] == "10.00x"
    assert "0.9456" in html_section(build(rec))


def test_headline_names_targets_and_the_most_compressed_model():
    from nbhelpers.measure.leaderboard import headline

    rec = {
        "targets": [{"met": True}, {"met": False}],
        "targets_speedup": [{"met": True}],
        "comparison_baseline": "fp32",
        "comparison": [
            _row("fp32", 0.98, 1000, 2.0, size_ratio=1.0),
            _row(
                "int8",
                0.979,
                250,
                1.0,
                size_ratio=4.0,
                speedup_b256=2.0,
                accuracy_delta_points=-0.1,
                delta_low_points=-0.3,
                delta_high_points=0.1,
                verdict="within noise",
            ),
            _row("int4", 0.97, 500, 1.5, size_ratio=2.0),
        ],
    }
    assert headline(rec) == (
        "2 of 3 targets met; int8: 4.0x smaller, 2.00x as fast at batch 256, "
        "accuracy -0.10 [-0.30, +0.10] points (within noise)"
    )
    assert headline({}) == ""
    search = {
        "best_params": {"hidden": 81, "lr": 0.01, "weight_decay": 1e-06},
        "test_accuracy": 0.8667,
    }
    assert (
        headline(search)
        == "best setting hidden 81, lr 0.01, weight_decay 1e-06: test accuracy 0.8667"
    )
    assert headline({**search, "targets": [{"met": True}]}) == "1 of 1 targets met"
