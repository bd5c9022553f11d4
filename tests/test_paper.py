"""nbhelpers.reporting.paper: the papers' figures beside ours, from recorded comparisons."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from notebook_runner import parameters_cell

from nbhelpers.reporting import bench, claims, paper
from nbhelpers.reporting.runner import RunResult

ROOT = Path(__file__).resolve().parents[1]


def _row(model, acc, lo, hi, **extra):
    return {"model": model, "accuracy": acc, "accuracy_low": lo, "accuracy_high": hi, **extra}


PRUNING = {
    "comparison_baseline": "dense",
    "pruned_model": "pruned",
    "comparison": [
        _row("dense", 0.9836, 0.9810, 0.9859, params=266610, nonzero=266610),
        _row(
            "pruned",
            0.9830,
            0.9803,
            0.9854,
            params=266610,
            nonzero=22000,
            accuracy_delta_points=-0.06,
            delta_low_points=-0.2,
            delta_high_points=0.08,
            p_mcnemar=0.4,
        ),
    ],
}
PIPELINE = {
    "comparison_baseline": "baseline fp32",
    "final_stage": "5 int8",
    "comparison": [
        _row("baseline fp32", 0.98, 0.977, 0.9826, size_ratio=1.0),
        _row(
            "5 int8",
            0.979,
            0.976,
            0.9817,
            size_ratio=41.5,
            accuracy_delta_points=-0.1,
            delta_low_points=-0.3,
            delta_high_points=0.1,
        ),
    ],
}
#: How a target names the row of a run recorded before notebook 10 recorded its like-for-like row.
FULL = " (full stack: run recorded before the like-for-like row)"
RECORDS = {"04_weight_pruning": PRUNING, "10_compression_pipeline": PIPELINE}


def test_claims_read_ours_from_the_records():
    t = claims.claims_table(RECORDS, {"04_weight_pruning": 100.0}).set_index(
        ["notebook", "setting", "metric"]
    )
    dense = t.loc[("04_weight_pruning", "LeNet-300-100 dense", "test error (%)")]
    assert dense["ours"] == pytest.approx(1.64) and dense["difference"] == pytest.approx(0.0)
    assert (dense["low"], dense["high"]) == pytest.approx((1.41, 1.90)) and dense[
        "seconds"
    ] == 100.0
    ratio = t.loc[("04_weight_pruning", "LeNet-300-100 pruned", "fewer parameters (x)")]
    assert ratio["ours"] == pytest.approx(266610 / 22000) and math.isnan(ratio["low"])
    size = t.loc[("10_compression_pipeline", "LeNet-300-100 compressed", "smaller on disk (x)")]
    assert size["ours"] == 41.5 and size["published"] == 40.0


def test_claims_not_run_stay_nan():
    t = claims.claims_table({}, {})
    assert t["ours"].isna().all() and len(t) == len(claims.CLAIMS)
    assert t["checked"].str.len().gt(0).all()  # every published figure says how it was checked


def test_profile_targets():
    ts = {t["name"]: t for t in claims.profile_targets(RECORDS)}
    assert ts["LeNet-300-100 dense error within 0.15 points of 1.64%"]["met"]
    no_loss = [t for name, t in ts.items() if "no significant loss" in name]
    assert (
        len(no_loss) == 1 and no_loss[0]["met"] and no_loss[0]["measured"] == pytest.approx(-0.08)
    )
    loss = ts["Deep Compression pipeline" + FULL + ": loss against its dense model"]
    assert loss["met"] and loss["decided"] is False and (loss["low"], loss["high"]) == (-0.1, 0.3)
    assert claims.profile_targets({}) == []


def test_a_significant_gain_is_not_a_loss():
    """Pruned significantly better (loss interval wholly below 0): no significant loss, met; a loss
    interval wholly above 0 is not met."""
    better = dict(
        PRUNING,
        comparison=[
            PRUNING["comparison"][0],
            {
                **PRUNING["comparison"][1],
                "accuracy_delta_points": 0.3,
                "delta_low_points": 0.02,
                "delta_high_points": 0.6,
                "p_mcnemar": 0.03,
            },
        ],
    )
    worse = dict(
        PRUNING,
        comparison=[
            PRUNING["comparison"][0],
            {
                **PRUNING["comparison"][1],
                "accuracy_delta_points": -0.3,
                "delta_low_points": -0.6,
                "delta_high_points": -0.02,
                "p_mcnemar": 0.03,
            },
        ],
    )

    def pick(rec):
        return next(
            t
            for t in claims.profile_targets({"04_weight_pruning": rec})
            if "no significant loss" in t["name"]
        )

    assert pick(better)["met"] and not pick(worse)["met"]


def test_markdown_has_every_claim_and_the_machine():
    runs = {
        "04_weight_pruning": RunResult(
            "04_weight_pruning", "ok", 100.0, records=PRUNING, finished_at="2026-11-24T01:02:03"
        ),
        "10_compression_pipeline": RunResult(
            "10_compression_pipeline", "failed", 5.0, error="RuntimeError: x"
        ),
    }
    text = paper.markdown(
        runs, 105.0, {"cpu": "Test CPU", "commit": "abc123"}, {"04_weight_pruning": "old999"}
    )
    assert (
        "| Han, Pool, Tran, Dally 2015 | Table 1 | LeNet-300-100 dense | test error (%) | 1.64 "
        "| 1.64 [1.41, 1.9] |" in text
    )
    assert text.count("not run") >= 5 and "Test CPU" in text and "abc123" in text
    assert "| 04_weight_pruning | ok | 100 | 2026-11-24 01:02 | old999 |  |" in text
    assert "| 10_compression_pipeline | failed | 5 |  | abc123 | RuntimeError: x |" in text
    assert "105 s in all (0.03 h)" in text


def test_runs_are_parameter_files_and_variants(tmp_path):
    for name in ("04_weight_pruning.yaml", "04_weight_pruning.lenet5_caffe.yaml", "08_bn.yaml"):
        (tmp_path / name).write_text("SEED: 0\n")
    names = list(paper.profile_runs(tmp_path))
    assert names == ["04_weight_pruning", "04_weight_pruning.lenet5_caffe", "08_bn"]
    assert paper.select_runs(names, None) == names
    assert paper.select_runs(names, ["04"]) == names[:2]
    assert paper.select_runs(names, ["04_weight_pruning.lenet5_caffe", "08"]) == names[1:]
    assert paper.select_runs(names, ["04_weight_pruning"]) == names[:1]  # a full name: that alone
    with pytest.raises(ValueError, match=r"no run named \['09'\]; the runs are"):
        paper.select_runs(names, ["09"])


def test_run_log_round_trip_keeps_earlier_runs(tmp_path):
    assert paper.load_log(tmp_path) == {}
    r = RunResult("04_weight_pruning", "ok", 12.5, {"MODEL": "lenet5_caffe"}, "", {"a": 1}, "t")
    from dataclasses import asdict

    paper.save_log(
        tmp_path, {"04_weight_pruning.lenet5_caffe": {"result": asdict(r), "commit": "c"}}
    )
    back = paper.load_log(tmp_path)["04_weight_pruning.lenet5_caffe"]
    assert RunResult(**back["result"]) == r and back["commit"] == "c"
    (tmp_path / paper.LOG_NAME).write_text("{broken")
    assert paper.load_log(tmp_path) == {}


def test_caffe_lenet5_rows_and_targets():
    """The Caffe LeNet-5 run of 04 fills Han et al.'s LeNet-5 rows and its three targets."""
    caffe = {
        "comparison_baseline": "dense",
        "pruned_model": "pruned",
        "comparison": [
            _row("dense", 0.9920, 0.9901, 0.9936, params=431080, nonzero=431080),
            _row(
                "pruned",
                0.9915,
                0.9895,
                0.9932,
                params=431080,
                nonzero=35450,
                accuracy_delta_points=-0.05,
                delta_low_points=-0.15,
                delta_high_points=0.05,
                p_mcnemar=0.5,
            ),
        ],
    }
    t = claims.claims_table({claims.CAFFE: caffe}, {}).set_index(["setting", "metric"])
    dense = t.loc[("LeNet-5 (Caffe, 20-50-500) dense", "test error (%)")]
    assert dense.ours == pytest.approx(0.80) and dense.published == 0.80
    assert t.loc[("LeNet-5 (Caffe) pruned", "test error (%)")].ours == pytest.approx(0.85)
    assert t.loc[("LeNet-5 (Caffe) pruned", "fewer parameters (x)")].ours == pytest.approx(
        431080 / 35450
    )
    assert math.isnan(t.loc[("LeNet-5 (Caffe) compressed", "test error (%)")].ours)  # 10's run
    ts = {x["name"]: x for x in claims.profile_targets({claims.CAFFE: caffe})}
    assert ts["LeNet-5 (Caffe) dense error within 0.15 points of 0.80%"]["met"]
    assert ts["LeNet-5 (Caffe) pruned: fewer parameters"]["met"]
    no_loss = next(v for k, v in ts.items() if k.startswith("LeNet-5 (Caffe) pruned at 12x"))
    assert no_loss["met"] and no_loss["measured"] == pytest.approx(-0.05)  # loss interval's low end


@pytest.mark.parametrize(
    "params", sorted((ROOT / "docs" / "paper").glob("*.yaml")), ids=lambda p: p.stem
)
def test_paper_parameters_are_parameters_of_their_notebook(params: Path):
    _, names = parameters_cell(ROOT / "notebooks" / f"{params.stem.split('.')[0]}.ipynb")
    assert set(yaml.safe_load(params.read_text())) <= set(names)


DISTIL = {
    "split_sizes": {"test": 10000},
    "teacher_test_accuracy": 0.9930,
    "main_summary": [
        {"student": "plain", "mean": 0.9850},
        {"student": "distilled", "mean": 0.9910},
    ],
    "targets": [{"measured": 0.75, "low": 0.55, "high": 0.95}],
}
SIGMOID = {
    "facts_sigmoid": {"best_no_bn_lr": 2.5},
    "sigmoid_curves": [
        {"bn": bn, "lr": lr, "epoch": e, "val_accuracy": acc}
        for bn, lr, e, acc in [
            (False, 2.5, 1, 0.10),
            (True, 2.5, 1, 0.80),
            (False, 2.5, 2, 0.90),
            (True, 2.5, 2, 0.93),
            (False, 2.5, 3, 0.95),
            (True, 2.5, 3, 0.94),
            (False, 0.5, 1, 0.1),
            (True, 0.5, 1, 0.99),
        ]
    ],
}


def test_hinton_and_ioffe_rows():
    t = claims.claims_table(
        {"07_knowledge_distillation": DISTIL, "08_batch_normalization": SIGMOID}, {}
    )
    t = t.set_index("setting")
    teacher = t.loc["1200-1200 teacher (dropout, 2-pixel jitter)"]
    assert (
        teacher["ours"] == 70
        and teacher["low"] < 70 < teacher["high"]
        and teacher["published"] == 67
    )
    assert t.loc["800-800 student, plain", "ours"] == 150
    assert t.loc["800-800 student, distilled at T = 20", "ours"] == 90
    # BN above at epochs 1 and 2, below at 3, at the best no-BN rate (the 0.5 rows are ignored)
    assert t.loc["3 x 100 sigmoid units, batches of 60", "ours"] == pytest.approx(2 / 3)
    ts = {
        x["name"]: x
        for x in claims.profile_targets(
            {"07_knowledge_distillation": DISTIL, "08_batch_normalization": SIGMOID}
        )
    }
    gap = next(x for n, x in ts.items() if n.startswith("Hinton") and "gap" in n)
    assert gap["met"] and gap["decided"] and (gap["low"], gap["high"]) == (0.55, 0.95)
    # 70 teacher errors (<= 80), 90 distilled (<= 90, the goal inside its interval), plain 150
    # is 4 from 146 and its Wilson interval spans 146, so the nearest distance is 0
    teacher = ts["Hinton: 1200-1200 teacher, test errors"]
    assert teacher["met"] and teacher["measured"] == 70 and teacher["low"] < 70 < teacher["high"]
    distilled = ts["Hinton: distilled 800-800 student, test errors"]
    assert distilled["met"] and distilled["measured"] == 90 and distilled["decided"] is False
    plain = [x for n, x in ts.items() if n.startswith("Hinton: plain")]
    assert len(plain) == 1 and plain[0]["met"] and plain[0]["measured"] == 4
    assert plain[0]["low"] == 0 and plain[0]["high"] > 4
    far = claims.hinton_error_targets(
        {**DISTIL, "main_summary": [{"student": "plain", "mean": 0.9750},
                                    {"student": "distilled", "mean": 0.9880}]})  # fmt: skip
    assert [t["met"] for t in far] == [True, False, False]
    assert far[2]["measured"] == 104 and far[2]["low"] > 30  # 250 errors: 104 from 146, decided
    bn = next(x for n, x in ts.items() if n.startswith("Ioffe"))
    assert not bn["met"] and bn["measured"] == pytest.approx(2 / 3)


def test_deep_compression_lenet5_rows_and_targets():
    """The Caffe LeNet-5 run of 10 fills Deep Compression's LeNet-5 rows and its two targets."""
    t = claims.claims_table({claims.DC_CAFFE: PIPELINE}, {}).set_index(
        ["paper", "setting", "metric"]
    )
    dc = "Han, Mao, Dally 2016 (Deep Compression)"
    assert t.loc[(dc, "LeNet-5 (Caffe) dense", "test error (%)")].ours == pytest.approx(2.0)
    compressed = t.loc[(dc, "LeNet-5 (Caffe) compressed", "test error (%)")]
    assert compressed.ours == pytest.approx(2.1) and compressed.published == 0.74
    size = t.loc[(dc, "LeNet-5 (Caffe) compressed", "smaller on disk (x)")]
    assert size.ours == pytest.approx(41.5) and size.published == 39
    ts = {x["name"]: x for x in claims.profile_targets({claims.DC_CAFFE: PIPELINE})}
    assert ts["Deep Compression pipeline, LeNet-5 (Caffe)" + FULL + ": smaller on disk"][
        "met"
    ]  # 41.5 >= 39
    loss = ts[
        "Deep Compression pipeline, LeNet-5 (Caffe)" + FULL + ": loss against its dense model"
    ]
    assert loss["measured"] == pytest.approx(0.1) and loss["met"]
    assert not any(
        n.startswith("Deep Compression pipeline (") for n in ts
    )  # the MLP run did not run


def test_render_writes_the_doc_from_the_log_without_running(tmp_path):
    from dataclasses import asdict

    r = RunResult("04_weight_pruning", "ok", 100.0, records=PRUNING, finished_at="2026-11-24T01:00")
    paper.save_log(tmp_path, {"04_weight_pruning": {"result": asdict(r), "commit": "abc1234"}})
    doc = tmp_path / "papers.md"
    assert paper.main(["--render", "--log", str(tmp_path), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "| 04_weight_pruning | ok | 100 | 2026-11-24 01:00 | abc1234 |  |" in text
    assert "| LeNet-300-100 dense | test error (%) | 1.64 | 1.64 [1.41, 1.9] |" in text
    assert list(tmp_path.glob("*.ipynb")) == []  # nothing ran


def test_a_profile_with_a_misspelt_parameter_runs_nothing(tmp_path, monkeypatch, capsys):
    """Every chosen profile is checked before the first run (each may take hours)."""
    good, bad = tmp_path / "04_weight_pruning.yaml", tmp_path / "07_knowledge_distillation.yaml"
    good.write_text("SEED: 0\n")
    bad.write_text("TEMPERATURE: 20\n")
    monkeypatch.setattr(paper, "profile_runs", lambda: {f.stem: f for f in (good, bad)})
    monkeypatch.setattr(bench, "commit", lambda: "abc1234")  # a clean tree
    ran = []
    monkeypatch.setattr(paper, "run_all", lambda *a, **k: ran.append(a) or [])
    doc = tmp_path / "papers.md"
    assert (
        paper.main(["--out", str(tmp_path / "runs"), "--log", str(tmp_path), "--doc", str(doc)])
        == 2
    )
    err = capsys.readouterr().err
    assert "unknown parameter 'TEMPERATURE'" in err and "did you mean SWEEP_TEMPERATURES?" in err
    assert ran == [] and not doc.exists() and not (tmp_path / "runs").exists()


def test_deep_compression_is_compared_with_the_like_for_like_row():
    """Han et al. prune, quantize and Huffman-code LeNet-300-100 itself: their 40x is set beside
    the like-for-like row when a run recorded it, not beside the distilled full stack."""
    like = "like-for-like: baseline pruned + int8 + entropy coding"
    rec = {
        **PIPELINE,
        "like_for_like": like,
        "comparison": PIPELINE["comparison"]
        + [
            _row(
                like,
                0.978,
                0.975,
                0.981,
                size_ratio=27.5,
                accuracy_delta_points=-0.2,
                delta_low_points=-0.4,
                delta_high_points=0.0,
            )
        ],
    }
    assert claims.deep_compression_row(rec) == like
    assert claims.deep_compression_row(PIPELINE) == "5 int8"  # an older run: said in the row
    t = {x["name"]: x for x in claims.profile_targets({"10_compression_pipeline": rec})}
    size = t["Deep Compression pipeline (like-for-like row): smaller on disk"]
    assert (size["measured"], size["met"], size["note"]) == (27.5, False, like)
    old = claims.profile_targets({"10_compression_pipeline": PIPELINE})
    assert "(full stack: run recorded before the like-for-like row)" in old[0]["name"]


def test_a_dirty_tree_runs_nothing_unless_allowed(tmp_path, monkeypatch, capsys):
    """docs/papers.md names the commit its runs came from: uncommitted changes stop the runs."""
    good = tmp_path / "04_weight_pruning.yaml"
    good.write_text("SEED: 0\n")
    monkeypatch.setattr(paper, "profile_runs", lambda: {good.stem: good})
    monkeypatch.setattr(bench, "commit", lambda: "abc1234+changes")
    ran = []
    monkeypatch.setattr(paper, "run_all", lambda *a, **k: ran.append(a) or [])
    doc, out = tmp_path / "papers.md", tmp_path / "runs"
    assert paper.main(["--out", str(out), "--log", str(out), "--doc", str(doc)]) == 2
    assert "--allow-dirty" in capsys.readouterr().err
    assert ran == [] and not doc.exists() and not out.exists()

    class Started(Exception):
        pass

    def first_run(*a, **k):
        ran.append(a)
        raise Started  # the run would start here: enough to know it was not refused

    monkeypatch.setattr(paper, "run_all", first_run)
    with pytest.raises(Started):  # told otherwise, it runs
        paper.main(["--out", str(out), "--log", str(out), "--doc", str(doc), "--allow-dirty"])
    assert len(ran) == 1


def test_a_profile_of_a_missing_notebook_names_its_file(tmp_path, monkeypatch, capsys):
    ghost = tmp_path / "99_no_such_notebook.yaml"
    ghost.write_text("SEED: 0\n")
    monkeypatch.setattr(paper, "profile_runs", lambda: {ghost.stem: ghost})
    monkeypatch.setattr(bench, "commit", lambda: "abc1234")
    with pytest.raises(SystemExit) as e:
        paper.main(["--out", str(tmp_path / "runs"), "--doc", str(tmp_path / "papers.md")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert str(ghost) in err and "99_no_such_notebook" in err


def test_equal_figures_differ_by_zero_not_by_float_rounding():
    rec = {**PRUNING, "comparison": [PRUNING["comparison"][0], {**PRUNING["comparison"][1]}]}
    rec["comparison"][1]["accuracy"] = 0.9841  # 1.59% error: (1 - 0.9841) * 100 != 1.59 exactly
    runs = {"04_weight_pruning": RunResult("04_weight_pruning", "ok", 1.0, records=rec)}
    text = paper.markdown(runs, 1.0, {"cpu": "Test CPU", "commit": "abc"}, {})
    row = next(line for line in text.splitlines() if "LeNet-300-100 pruned | test error" in line)
    assert "| 1.59 | 1.59 [" in row and "| +0 |" in row and "e-1" not in row


def test_ioffe_row_reads_the_test_curve_when_recorded():
    fig1 = {"share_above": 0.98, "first_step_not_above": 1500, "points": 100, "last_step": 50000}
    rec = {**SIGMOID, "figure1": {**fig1, "lr": 2.5}}
    t = claims.claims_table({"08_batch_normalization": rec}, {}).set_index("setting")
    assert t.loc["3 x 100 sigmoid units, batches of 60", "ours"] == pytest.approx(0.98)
    bn = next(
        x for x in claims.profile_targets({"08_batch_normalization": rec}) if "Ioffe" in x["name"]
    )
    assert not bn["met"] and "first step BN not above: 1500" in bn["note"]
    never = {**rec, "figure1": {**rec["figure1"], "share_above": 1.0, "first_step_not_above": None}}
    bn = next(
        x for x in claims.profile_targets({"08_batch_normalization": never}) if "Ioffe" in x["name"]
    )
    assert bn["met"] and "100 test scorings to step 50000" in bn["note"] and "never" in bn["note"]


def test_budget_target_sums_every_profile_and_misses_while_one_is_not_run():
    ok = {
        "a": RunResult("a", "ok", 4000.0),
        "b.x": RunResult("b", "ok", 3000.0),
        "c": RunResult("c", "failed", 10.0, error="boom"),
    }
    full = paper.budget_target(ok, ["a", "b.x"])
    assert full["met"] and full["measured"] == 7000.0 and full["threshold"] == 7200.0
    over = paper.budget_target({**ok, "a": RunResult("a", "ok", 4201.0)}, ["a", "b.x"])
    assert not over["met"] and over["measured"] == 7201.0
    partial = paper.budget_target(ok, ["a", "b.x", "c", "d"])  # c failed, d never ran
    assert not partial["met"] and partial["measured"] == 7000.0
    assert "2 of 4 profiles" in partial["note"] and "not run: c, d" in partial["note"]
    text = paper.markdown(ok, 1.0, {"cpu": "Test CPU", "commit": "abc"}, {}, ["a", "b.x"])
    row = "| make paper: every profile, one at a time | 7000 s | <= 7200 s | yes | 2 of 2 profiles"
    assert row in text


def test_teacher_curve_note_shows_the_error_falling_with_epochs():
    from nbhelpers.reporting.hinton_claims import teacher_curve_note

    curves = [
        {"model": "teacher", "seed": 0, "epoch": e, "val_error": 2.0 - e / 10} for e in range(1, 9)
    ] + [{"model": "plain", "seed": 0, "epoch": 1, "val_error": 0.1}]
    note = teacher_curve_note({"learning_curves": curves})
    assert note == (
        "validation error (%) after epochs 2/4/6/8: 1.80/1.60/1.40/1.20; lowest at epoch 8 of 8"
    )
    assert teacher_curve_note({}) == ""
    assert teacher_curve_note({"learning_curves": curves[-1:]}) == ""  # no teacher rows
    rec = {**DISTIL, "learning_curves": curves}
    teacher = claims.hinton_error_targets(rec)[0]
    assert teacher["note"] == "the paper: 67; " + note


def test_a_render_says_it_ran_nothing():
    runs = {"a": RunResult("a", "ok", 10.0)}
    info = {"cpu": "Test CPU", "commit": "abc"}
    assert "this invocation ran nothing" in paper.markdown(runs, None, info, {}, ["a"])
    assert "this invocation: 12 s wall" in paper.markdown(runs, 12.0, info, {}, ["a"])
