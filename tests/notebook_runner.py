"""Run a notebook through papermill for the tests, with its small parameters, and check records."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nbformat
import yaml

from nbhelpers.reporting.runner import RunResult, run_notebook

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


def validation_error(nb_path: Path, out_dir: Path, **overrides: Any) -> BaseException | None:
    """Run a notebook's cells up to its validation cell in this process; return what it raised.

    The code cells before the ``parameters`` cell (the imports), the parameters cell, the overrides
    (as papermill would inject them, in a cell headed ``# Parameters``, with IPython's ``In``
    history of executed sources kept in the namespace) and then the next code cell (the validation
    cell) run in one fresh namespace. ``OUTPUT_DIR`` points into ``out_dir``. This is what papermill
    executes before any work, without a kernel start per case; one papermill test checks the same
    path end to end.

    Args:
        nb_path: the notebook.
        out_dir: a scratch folder.
        **overrides: parameter values to inject.

    Returns:
        The exception raised by any of these cells, or None when validation passed.
    """
    nb = nbformat.read(str(nb_path), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    p = next(i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", []))
    injected = "# Parameters\n" + "\n".join(
        f"{k} = {v!r}" for k, v in {"OUTPUT_DIR": str(out_dir / "artifacts"), **overrides}.items()
    )
    sources = [c.source for c in code[: p + 1]] + [injected, code[p + 1].source]
    namespace: dict[str, Any] = {"__name__": "__notebook__", "In": [""]}  # IPython's history
    try:
        for i, src in enumerate(sources):
            namespace["In"].append(src)
            exec(compile(src, f"{nb_path.name}[{i}]", "exec"), namespace)
    except Exception as err:  # noqa: BLE001 - the caller asserts on the exception's type and text
        return err
    return None


def assert_fails_in_validation(nb_path: Path, out_dir: Path, name: str, **overrides: Any) -> None:
    """Assert that the overrides stop a notebook in its validation cell with a ParameterError
    naming ``name``."""
    from nbhelpers.core.params import ParameterError

    err = validation_error(nb_path, out_dir, **overrides)
    assert isinstance(err, ParameterError), f"expected a ParameterError naming {name}, got {err!r}"
    assert name in str(err), str(err)


def parameters_cell(nb_path: Path) -> tuple[int, dict[str, Any]]:
    """Index of the cell tagged ``parameters`` and its name -> literal value."""
    nb = nbformat.read(str(nb_path), as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{nb_path.name}: {len(tagged)} cells tagged 'parameters'"
    values = {}
    for node in ast.parse(nb.cells[tagged[0]].source).body:
        assert isinstance(node, ast.AnnAssign), (
            f"{nb_path.name}: parameters need type hints: {ast.unparse(node)}"
        )
        values[node.target.id] = ast.literal_eval(node.value)
    return tagged[0], values


RULE_KEYS = ("equals", "min", "max", "len", "keys", "approx")


def rule_problems(rules: dict[str, Any]) -> list[str]:
    """Rules that cannot fail: empty, unknown keys, or a range every value of that kind satisfies.

    Args:
        rules: name -> rule, as in ``tests/expect/<stem>.yaml``.

    Returns:
        One message per bad rule.
    """
    problems = []
    for name, rule in rules.items():
        if not isinstance(rule, dict) or not rule:
            problems.append(f"{name}: empty rule {rule!r} checks nothing")
            continue
        unknown = set(rule) - set(RULE_KEYS)
        if unknown:
            problems.append(
                f"{name}: unknown rule keys {sorted(unknown)} (allowed: {', '.join(RULE_KEYS)})"
            )
        lo, hi = rule.get("min"), rule.get("max")
        if "accuracy" in name and lo is not None and lo <= 0 and (hi is None or hi >= 1):
            problems.append(f"{name}: min {lo} / max {hi} holds for any accuracy")
        if lo is not None and hi is not None and lo <= -100 and hi >= 100:
            problems.append(f"{name}: [{lo}, {hi}] holds for any value in points or percent")
        if (
            any(w in name for w in ("latency", "seconds", "_ms"))
            and set(rule) == {"min"}
            and lo <= 0
        ):
            problems.append(f"{name}: min {lo} holds for any time")
    return problems


def check_expectations(stem: str, records: dict[str, Any]) -> list[str]:
    """Compare recorded values with the rules in ``tests/expect/<stem>.yaml``; return the failures.

    A rule is a non-empty mapping of ``RULE_KEYS``: ``equals`` (exact), ``min``, ``max`` (numbers),
    ``len`` (length of a list or dict), ``keys`` (keys a dict must have), ``approx: [value,
    tolerance]``. An empty rule or an unknown key is itself a failure (it would check nothing).
    """
    rules = yaml.safe_load((EXPECT_DIR / f"{stem}.yaml").read_text()) or {}
    problems = rule_problems(rules)
    for name, rule in rules.items():
        if not isinstance(rule, dict) or not rule or set(rule) - set(RULE_KEYS):
            continue
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


#: A row of the facts table named in a Discussion: a single-asterisk italic phrase (bold ``**`` and
#: escaped ``\*`` are not names).
_ITALIC = re.compile(r"(?<![*\\\w])\*(?![*\s])([^*\n]+?)(?<![\s\\])\*(?![*\w])")


def discussion_fact_names(nb_path: Path) -> list[str]:
    """The facts-table rows a notebook's Discussion names, in order, each once.

    The Discussion runs from the markdown heading ``## <n>. Discussion`` to the next ``## ``
    heading; every ``*italic*`` phrase in it names a row of the facts table the notebook records
    as ``facts`` (its ``fact`` column), so a claim that depends on the run points at the row that
    decides it.

    Args:
        nb_path: the notebook.

    Returns:
        The names (empty when there is no Discussion).
    """
    nb = nbformat.read(str(nb_path), as_version=4)
    paragraphs: list[str] = []
    inside = False
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            if line.startswith("## "):
                inside = bool(re.match(r"## \d+\. Discussion", line))
            elif inside:
                paragraphs.append(line)
        paragraphs.append("")  # a cell ends a paragraph
    text = "\n".join(paragraphs)
    # a name may wrap across lines of one paragraph: join them, one space for any run of spaces
    blocks = [" ".join(b.split()) for b in re.split(r"\n\s*\n|\n(?=\s*[*-] )", text)]
    names = [m.group(1) for b in blocks for m in _ITALIC.finditer(b)]
    return list(dict.fromkeys(names))


def fact_names(records: dict[str, Any]) -> set[str]:
    """The row names of the ``facts`` table a run recorded (empty when it recorded none)."""
    facts = records.get("facts") or []
    return {row["fact"] for row in facts if isinstance(row, dict) and "fact" in row}


def unmatched_fact_names(nb_path: Path, records: dict[str, Any]) -> list[str]:
    """The Discussion's fact names that match no row of the run's facts table.

    ``...`` or ``…`` in a name stands for any text (one name for a family of rows, such as
    ``…: times smaller``); every other character must match exactly.
    """
    rows = fact_names(records)
    missing = []
    for name in discussion_fact_names(nb_path):
        parts = re.split(r"\.\.\.|…", name)
        pattern = re.compile(".+".join(re.escape(p) for p in parts) + r"\Z", re.S)
        if not any(pattern.match(row) for row in rows):
            missing.append(name)
    return missing


#: Notebooks whose Method section writes the technique out in plain torch/numpy and checks it
#: against the library path (a code cell tagged ``technique-core``).
TECHNIQUE_CORE_TAG = "technique-core"
TECHNIQUE_NOTEBOOKS = (*(f"{i:02d}" for i in range(1, 10)), "12", "13", "14", "15", "16")


def technique_core_problems(nb: Any, records: Mapping[str, Any] | None = None) -> list[str]:
    """What is wrong with a notebook's technique-core cell (empty when nothing is).

    In the committed notebook: exactly one code cell tagged ``technique-core``, inside section 2
    (Method), at most 30 lines, asserting. In an executed notebook (``records`` given): that cell
    ran without an error, and the recorded ``technique_core`` ({"what", "max_abs_diff",
    "tolerance"}) has its difference within its tolerance.

    Args:
        nb: a notebook (``nbformat`` node) or its path.
        records: the run's records, for an executed notebook.

    Returns:
        One sentence per problem.
    """
    book = nbformat.read(str(nb), as_version=4) if isinstance(nb, (str, Path)) else nb
    tagged = [
        i for i, c in enumerate(book.cells) if TECHNIQUE_CORE_TAG in c.metadata.get("tags", [])
    ]
    if len(tagged) != 1:
        return [f"{len(tagged)} cells tagged {TECHNIQUE_CORE_TAG!r}, expected one"]
    i, problems = tagged[0], []
    cell = book.cells[i]
    heads = [
        (j, c.source.split("\n", 1)[0])
        for j, c in enumerate(book.cells)
        if c.cell_type == "markdown" and c.source.startswith("## ")
    ]
    section = next((h for j, h in reversed(heads) if j < i), "")
    if cell.cell_type != "code":
        problems.append("the technique-core cell is not a code cell")
    if not section.startswith("## 2."):
        problems.append(f"the technique-core cell is under {section!r}, not section 2 (Method)")
    if len(cell.source.splitlines()) > 30:
        problems.append(f"the technique-core cell has {len(cell.source.splitlines())} lines (> 30)")
    if "assert" not in cell.source:
        problems.append("the technique-core cell asserts nothing")
    if records is None:
        return problems
    if cell.get("execution_count") is None:
        problems.append("the technique-core cell did not run")
    if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
        problems.append("the technique-core cell raised")
    core = records.get("technique_core")
    if not isinstance(core, Mapping) or not {"what", "max_abs_diff", "tolerance"} <= set(core):
        return problems + ["no technique_core record with what, max_abs_diff and tolerance"]
    if not str(core["what"]).strip():
        problems.append("technique_core does not say what it compared")
    if not float(core["max_abs_diff"]) <= float(core["tolerance"]):
        problems.append(
            f"technique_core: difference {core['max_abs_diff']} above tolerance {core['tolerance']}"
        )
    return problems
