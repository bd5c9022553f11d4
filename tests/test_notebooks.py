"""Every notebook in notebooks/: the contract, a small papermill run checked on its records, bad
input."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from notebook_runner import (
    EXPECT_DIR,
    PARAMS_DIR,
    TECHNIQUE_NOTEBOOKS,
    assert_fails_in_validation,
    check_expectations,
    discussion_fact_names,
    dump,
    error_code_cell,
    fact_names,
    parameters_cell,
    parameters_code_cell,
    run,
    small_params,
    technique_core_problems,
    unmatched_fact_names,
    validation_error,
)

from nbhelpers.core.params import ParameterError, UnknownParameterError, notebook_parameters
from nbhelpers.core.record import without_timings

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]
COMMON = {"DATASET", "SEED", "DEVICE", "OUTPUT_DIR"}
#: What every notebook records about the machine it ran on (``nbhelpers.core.machine.describe``).
MACHINE_KEYS = {
    "cpu",
    "avx2",
    "avx512",
    "vnni",
    "amx",
    "torch_cpu_capability",
    "int8_reduce_range",
    "torch",
    "onnxruntime",
    "device",
}


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_contract(nb: Path):
    """Static contract: kernelspec, one literal parameters cell, YAML keys known, records,
    stripped."""
    book = nbformat.read(str(nb), as_version=4)
    assert book.metadata["kernelspec"]["name"] == "python3"
    assert book.metadata["language_info"]["name"] == "python"
    idx, params = parameters_cell(nb)
    assert COMMON <= set(params), f"missing common parameters {COMMON - set(params)}"
    for line in book.cells[idx].source.splitlines():
        if line.strip() and not line.startswith("#"):
            assert "#" in line, f"parameter without a trailing comment: {line}"
    assert (PARAMS_DIR / f"{nb.stem}.yaml").exists(), "tests/params/<stem>.yaml is missing"
    assert (EXPECT_DIR / f"{nb.stem}.yaml").exists(), "tests/expect/<stem>.yaml is missing"
    unknown = set(small_params(nb.stem)) - set(params)
    assert not unknown, f"tests/params keys that are not parameters: {unknown}"
    code = [c for c in book.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), (
        "commit notebooks without outputs"
    )
    assert any("record(" in c.source for c in code), "the notebook records nothing"
    md = "\n".join(c.source for c in book.cells if c.cell_type == "markdown")
    assert "Record results" in md and "References" in md
    assert book.cells[0].cell_type == "markdown" and book.cells[0].source.startswith("# ")
    assert discussion_fact_names(nb), "the Discussion names no row of the facts table"
    if nb.stem[:2] in TECHNIQUE_NOTEBOOKS:
        assert not technique_core_problems(book), technique_core_problems(book)
        assert any('record("technique_core"' in c.source for c in code), (
            "the technique-core check is not recorded"
        )


def all_targets(records: dict) -> list[dict]:
    """Every target a notebook recorded (``targets`` and ``targets_*``)."""
    return [
        t for k, v in records.items() if k == "targets" or k.startswith("targets_") for t in v or []
    ]


@pytest.mark.notebook
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_notebook_runs_and_records(nb: Path, tmp_path: Path):
    """Each notebook runs with its small parameters and records what tests/expect/<stem>.yaml
    asks."""
    result = run(nb, tmp_path)
    assert result.status == "ok", result.error
    missing = MACHINE_KEYS - set(result.records.get("machine", {}))
    assert not missing, f"the machine record lacks {sorted(missing)}"
    for t in all_targets(result.records):  # a loss of accuracy is judged from its paired interval
        if t["unit"] == "points" and any(w in t["name"] for w in ("lost", "loss", "drop")):
            assert t.get("low") is not None and t["low"] <= t["measured"] <= t["high"], t
    unmatched = unmatched_fact_names(nb, result.records)
    assert not unmatched, (
        f"the Discussion names rows its facts table lacks: {unmatched}; "
        f"rows: {sorted(fact_names(result.records))}"
    )
    if nb.stem[:2] in TECHNIQUE_NOTEBOOKS:  # the technique written out ran and agreed
        core = technique_core_problems(tmp_path / f"{nb.stem}.ipynb", result.records)
        assert not core, core
    problems = check_expectations(nb.stem, result.records)
    assert not problems, "\n".join(problems) + "\nrecorded:\n" + dump(result.records)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_unknown_dataset_fails_in_validation(nb: Path, tmp_path: Path):
    """DATASET='bogus' raises a ParameterError naming DATASET and its choices in the validation
    cell (the image datasets, or the text of a transformer lesson)."""
    err = validation_error(nb, tmp_path, DATASET="bogus")
    text = parameters_cell(nb)[1]["DATASET"] == "shakespeare"
    choice = "shakespeare" if text else "mnist5k"
    assert isinstance(err, ParameterError) and "DATASET" in str(err) and choice in str(err), (
        repr(err)
    )


@pytest.mark.notebook
def test_bad_input_stops_papermill_run_in_validation_cell(tmp_path: Path):
    """End to end through papermill: the injected cell comes after the tagged one, validation next,
    and the run stops there (the other bad-input tests run those cells in-process)."""
    nb = ROOT / "notebooks" / "00_baseline.ipynb"
    result = run(nb, tmp_path, DATASET="bogus")
    assert result.status == "failed"
    assert (
        "ParameterError" in result.error and "DATASET" in result.error and "mnist5k" in result.error
    )
    assert error_code_cell(tmp_path / f"{nb.stem}.failed.ipynb") == parameters_code_cell(nb) + 2


@pytest.mark.parametrize(
    "override,name",
    [({"SEED": -1}, "SEED"), ({"SEED": 1.5}, "SEED"), ({"DEVICE": "tpu"}, "DEVICE")],
)
def test_baseline_bad_input(override: dict, name: str, tmp_path: Path):
    """Bad SEED or DEVICE stops 00_baseline in its validation cell with a ParameterError."""
    assert_fails_in_validation(ROOT / "notebooks" / "00_baseline.ipynb", tmp_path, name, **override)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_misspelt_parameter_fails_in_validation(nb: Path, tmp_path: Path):
    """A misspelt injected name (DATASETT) stops every notebook in its validation cell, naming the
    closest parameter and all of them."""
    err = validation_error(nb, tmp_path, DATASETT="mnist")
    assert isinstance(err, UnknownParameterError), repr(err)
    assert "'DATASETT'" in str(err) and "did you mean DATASET?" in str(err), str(err)
    assert err.allowed.endswith(", ".join(sorted(notebook_parameters(nb)))), str(err)


@pytest.mark.parametrize(
    "stem,wrong,right",
    [
        ("04_weight_pruning", "TARGET_SPARCITY", "TARGET_SPARSITY"),
        ("07_knowledge_distillation", "TEMPERATURE", "SWEEP_TEMPERATURES"),
    ],
)
def test_misspelt_lesson_parameter_names_the_closest(stem: str, wrong: str, right: str, tmp_path):
    err = validation_error(ROOT / "notebooks" / f"{stem}.ipynb", tmp_path, **{wrong: 0.9})
    assert isinstance(err, UnknownParameterError) and err.closest == right, repr(err)


@pytest.mark.notebook
def test_misspelt_parameter_stops_papermill_run_in_validation_cell(tmp_path: Path):
    """End to end: papermill only warns about a name the notebook lacks; the validation cell
    refuses it before any work, and nothing is recorded."""
    nb = ROOT / "notebooks" / "04_weight_pruning.ipynb"
    result = run(nb, tmp_path, TARGET_SPARCITY=0.95)
    assert result.status == "failed"
    assert (
        "UnknownParameterError" in result.error and "did you mean TARGET_SPARSITY" in result.error
    )
    assert error_code_cell(tmp_path / f"{nb.stem}.failed.ipynb") == parameters_code_cell(nb) + 2
    assert result.records == {}


@pytest.mark.notebook
def test_same_seed_same_records(tmp_path: Path, monkeypatch):
    """Two runs of 00_baseline with one SEED, each training from scratch, record identical values.

    One epoch per model suffices: every weight after it depends on every shuffle and kernel call.
    """
    nb = ROOT / "notebooks" / "00_baseline.ipynb"
    records = []
    for i in range(2):
        monkeypatch.setenv("NBHELPERS_CACHE_DIR", str(tmp_path / f"cache{i}"))
        r = run(nb, tmp_path / f"run{i}", MLP_EPOCHS=1, CNN_EPOCHS=1, LATENCY_REPEATS=1)
        assert r.status == "ok", r.error
        records.append(without_timings(r.records))
    assert records[0] == records[1], json.dumps(records, indent=1)


WITH_TRAIN_SIZE = [p for p in NOTEBOOKS if "TRAIN_SIZE" in parameters_cell(p)[1]]


@pytest.mark.parametrize("nb", WITH_TRAIN_SIZE, ids=[p.stem for p in WITH_TRAIN_SIZE])
def test_negative_train_size_fails_in_validation(nb: Path, tmp_path: Path):
    assert_fails_in_validation(nb, tmp_path, "TRAIN_SIZE", TRAIN_SIZE=-1)


def test_train_size_out_of_range_fails_before_training(tmp_path: Path, monkeypatch):
    """A TRAIN_SIZE the dataset cannot give stops get_baseline before anything is trained or
    cached."""
    from nbhelpers.core.baseline import get_baseline

    monkeypatch.setenv("NBHELPERS_CACHE_DIR", str(tmp_path / "cache"))
    for size in (5, 10**6):
        with pytest.raises(ParameterError, match="TRAIN_SIZE"):
            get_baseline("mlp", "mnist", 0, epochs=1, train_size=size, progress=False)
    assert not list((tmp_path / "cache").glob("*.pt"))


def test_rules_that_cannot_fail_are_refused():
    from notebook_runner import rule_problems

    bad = rule_problems(
        {
            "a": {},
            "b": {"minimum": 1},
            "test_accuracy": {"min": 0.0, "max": 1.0},
            "delta_points": {"min": -100, "max": 100},
            "latency_b1_ms": {"min": 0.0},
        }
    )
    assert len(bad) == 5, bad
    assert (
        rule_problems(
            {"test_accuracy": {"min": 0.9}, "n": {"equals": 3}, "x": {"approx": [1, 0.1]}}
        )
        == []
    )


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_expectation_rules_can_fail(nb: Path):
    import yaml
    from notebook_runner import rule_problems

    assert not rule_problems(yaml.safe_load((EXPECT_DIR / f"{nb.stem}.yaml").read_text()) or {})


@pytest.mark.parametrize("stem", ["04_weight_pruning", "10_compression_pipeline"])
def test_bad_baseline_schedule_fails_in_validation(stem: str, tmp_path: Path):
    assert_fails_in_validation(
        ROOT / "notebooks" / f"{stem}.ipynb",
        tmp_path,
        "BASELINE_SCHEDULE",
        BASELINE_SCHEDULE="step",
    )


def test_bad_finetune_schedule_fails_in_validation(tmp_path: Path):
    assert_fails_in_validation(
        ROOT / "notebooks" / "04_weight_pruning.ipynb",
        tmp_path,
        "FINETUNE_SCHEDULE",
        FINETUNE_SCHEDULE="linear",
    )


def test_technique_core_check_can_fail(tmp_path: Path):
    """A notebook without the cell, a cell outside Method, one that did not run, and a difference
    above its tolerance are each reported."""
    md = nbformat.v4.new_markdown_cell
    core = nbformat.v4.new_code_cell("x = 1\nassert x == 1", metadata={"tags": ["technique-core"]})
    book = nbformat.v4.new_notebook(cells=[md("## 2. Method"), core, md("## 3. Results")])
    assert technique_core_problems(book) == []
    assert technique_core_problems(ROOT / "notebooks" / "00_baseline.ipynb") == [
        "0 cells tagged 'technique-core', expected one"
    ]
    late = nbformat.v4.new_notebook(cells=[md("## 2. Method"), md("## 3. Results"), core])
    assert "not section 2" in technique_core_problems(late)[0]
    ran = {"what": "a", "max_abs_diff": 1e-3, "tolerance": 1e-6}
    found = technique_core_problems(book, {"technique_core": ran})
    assert found == [
        "the technique-core cell did not run",
        "technique_core: difference 0.001 above tolerance 1e-06",
    ]


@pytest.mark.parametrize(
    "override,name",
    [
        ({"TEXT_PATH": "/no/such/file.txt"}, "TEXT_PATH"),
        ({"HEADS": 3}, "HEADS"),
        ({"GROUP_SIZES": [48]}, "GROUP_SIZES"),  # does not divide the width 128
        ({"SPARSITIES": [0.5, 1.0]}, "SPARSITIES"),
        ({"WARMUP_STEPS": 2000}, "WARMUP_STEPS"),
        ({"EVAL_WINDOWS": -1}, "EVAL_WINDOWS"),
        ({"BLOCK": 10**9}, "BLOCK"),
        ({"CONTEXT": 0}, "CONTEXT"),
        ({"HEAD_PRUNE_FRACTION": 1.0}, "HEAD_PRUNE_FRACTION"),
        ({"MLP_PRUNE_FRACTION": 0.999}, "MLP_PRUNE_FRACTION"),  # 2046 of 2048: a block empties
        ({"STRUCTURED_FINETUNE_STEPS": 0}, "STRUCTURED_FINETUNE_STEPS"),
    ],
)
def test_transformer_bad_input_fails_in_validation(override: dict, name: str, tmp_path: Path):
    """Notebook 12 refuses a bad text file, head count, group size, sparsity, warm-up, window
    count, bootstrap block, fraction of heads or MLP units to remove or structured fine-tuning
    length in its validation cell, before training."""
    nb = ROOT / "notebooks" / "12_transformer_compression.ipynb"
    assert_fails_in_validation(nb, tmp_path, name, **override)
