"""Run a notebook through papermill for the tests, with its small parameters, and check records."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import nbformat
import yaml

from nbhelpers.report import RunResult, run_notebook

ROOT = Path(__file__).resolve().parents[1]
PARAMS_DIR = ROOT / "tests" / "params"
EXPECT_DIR = ROOT / "tests" / "expect"


def small_params(stem: str) -> dict:
    """The small parameters of a notebook (``tests/params/<stem>.yaml``)."""
    return yaml.safe_load((PARAMS_DIR / f"{stem}.yaml").read_text()) or {}


def run(nb: Path, out_dir: Path, **overrides: Any) -> RunResult:
    """Run a notebook with its small parameters (plus overrides), artifacts in ``out_dir``."""
    params = {**small_params(nb.stem), "OUTPUT_DIR": str(out_dir / "artifacts"), **overrides}
    return run_notebook(nb, out_dir, params, html_out=False)


def parameters_cell(nb_path: Path) -> tuple[int, dict[str, Any]]:
    """Index of the cell tagged ``parameters`` and its name -> literal value."""
    nb = nbformat.read(str(nb_path), as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{nb_path.name}: {len(tagged)} cells tagged 'parameters'"
    values = {}
    for node in ast.parse(nb.cells[tagged[0]].source).body:
        assert isinstance(node, ast.AnnAssign), f"{nb_path.name}: parameters need type hints: {ast.unparse(node)}"
        values[node.target.id] = ast.literal_eval(node.value)
    return tagged[0], values


def check_expectations(stem: str, records: dict[str, Any]) -> list[str]:
    """Compare recorded values with the rules in ``tests/expect/<stem>.yaml``; return the failures.

    A rule is a mapping with any of: ``equals`` (exact), ``min``, ``max`` (numbers), ``len``
    (length of a list or dict), ``keys`` (keys a dict must have), ``approx: [value, tolerance]``.
    """
    rules = yaml.safe_load((EXPECT_DIR / f"{stem}.yaml").read_text()) or {}
    problems = []
    for name, rule in rules.items():
        if name not in records:
            problems.append(f"{name}: not recorded")
            continue
        v = records[name]
        if "equals" in rule and v != rule["equals"]:
            problems.append(f"{name}={v!r}, expected {rule['equals']!r}")
        if "min" in rule and not (v is not None and v >= rule["min"]):
            problems.append(f"{name}={v!r} < min {rule['min']}")
        if "max" in rule and not (v is not None and v <= rule["max"]):
            problems.append(f"{name}={v!r} > max {rule['max']}")
        if "len" in rule and len(v) != rule["len"]:
            problems.append(f"{name} has length {len(v)}, expected {rule['len']}")
        if "keys" in rule and not set(rule["keys"]) <= set(v):
            problems.append(f"{name} lacks keys {sorted(set(rule['keys']) - set(v))}")
        if "approx" in rule and abs(v - rule["approx"][0]) > rule["approx"][1]:
            problems.append(f"{name}={v!r}, expected {rule['approx'][0]} ± {rule['approx'][1]}")
    return problems


def error_code_cell(nb_path: Path) -> int | None:
    """Position among the code cells of the first cell that raised, in an executed notebook."""
    nb = nbformat.read(str(nb_path), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, c in enumerate(code):
        if any(o.get("output_type") == "error" for o in c.get("outputs", [])):
            return i
    return None


def parameters_code_cell(nb_path: Path) -> int:
    """Position among the code cells of the cell tagged ``parameters``."""
    nb = nbformat.read(str(nb_path), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    return next(i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", []))


def dump(records: dict) -> str:
    """Recorded values as readable JSON for assertion messages."""
    return json.dumps(records, indent=1, default=str)[:4000]
