"""The transfer table: each technique's MNIST verdict beside its transformer verdict."""

from __future__ import annotations

import pytest

from nbhelpers.measure import transfer

RECORDS = {
    "04_weight_pruning": {"comparison": [
        {"model": "mlp fp32", "verdict": "baseline", "accuracy_delta_points": 0.0},
        {"model": "mlp pruned 90%", "accuracy_delta_points": -0.31, "delta_low_points": -0.52,
         "delta_high_points": -0.10, "verdict": "worse"},
        {"model": "mlp pruned 90% csr kernels", "accuracy_delta_points": -0.31, "verdict": "worse"},
    ]},
    "12_transformer_compression": {
        "pruning": [{"sparsity": 0.5, "change": 0.0037, "low": 0.0026, "high": 0.0049,
                     "verdict": "worse"}],
        "targets_speedup": [{"name": "dynamic int8: speedup at batch 32", "measured": 1.85,
                             "op": ">=", "threshold": 1.5, "unit": "x", "met": True,
                             "low": None, "high": None}],
    },
}  # fmt: skip


def row(df, technique_start):
    return df[df["technique"].str.startswith(technique_start)].iloc[0]


def test_each_side_reads_its_rows_with_interval_and_verdict():
    df = transfer.build(RECORDS)
    assert list(df.columns) == ["technique", "MNIST (MLP, LeNet-5)", "transformer LM"]
    assert len(df) == len(transfer.TECHNIQUES)
    pruning = row(df, "weight pruning")
    assert pruning["MNIST (MLP, LeNet-5)"] == "mlp pruned 90%: -0.31 points [-0.52, -0.10], worse"
    assert pruning["transformer LM"] == "50% sparsity: +0.0037 bits/char [+0.0026, +0.0049], worse"


def test_missing_notebooks_and_tables_say_so():
    df = transfer.build(RECORDS)
    int8 = row(df, "dynamic int8")
    assert "06_quantization: not run" in int8["MNIST (MLP, LeNet-5)"]
    lines = int8["transformer LM"].split("\n")
    assert "12_transformer_compression: no quantization recorded" in lines
    assert "dynamic int8: speedup at batch 32: 1.85 x (target >= 1.5: met)" in lines
    assert row(df, "warm-up")["MNIST (MLP, LeNet-5)"] == "not measured"
    assert transfer.build({})["transformer LM"].str.contains("not run").all()


def test_a_pattern_that_matches_nothing_is_reported():
    picks = [transfer.Pick("04_weight_pruning", "comparison", r"^lenet5", "points")]
    assert transfer.read(RECORDS, picks) == "04_weight_pruning: no row matches ^lenet5"


def test_describe_kinds():
    t = {
        "name": "gap",
        "measured": 0.4,
        "op": ">=",
        "threshold": 0.5,
        "unit": "",
        "met": False,
        "low": 0.3,
        "high": 0.5,
    }
    assert transfer.describe(t, "target") == "gap: 0.4  [0.3, 0.5] (target >= 0.5: missed)"
    s = {"model": "m", "speedup_b1": 1.5, "speedup_b64": 2.0}
    assert transfer.describe(s, "speedup") == "m: 1.50x at b1, 2.00x at b64"
    with pytest.raises(ValueError, match="kind"):
        transfer.describe(t, "accuracy")


def test_html_and_markdown():
    html = transfer.html_section(RECORDS)
    assert "Does it transfer?" in html and "<br/>" in html
    md = transfer.markdown(RECORDS)
    assert md.count("\n") == len(transfer.TECHNIQUES) + 1
    bad = transfer.html_section({"04_weight_pruning": {"comparison": "not rows"}})
    assert "could not build the table" in bad
