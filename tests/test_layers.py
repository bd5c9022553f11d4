"""The package's layers: core <- measure <- techniques <- lessons <- reporting, checked by
import-linter's contract in pyproject.toml, which must also be able to fail."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
LAYERS = ["core", "measure", "techniques", "lessons", "reporting"]


def _lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(
        [str(LINT), "--config", str(cwd / "pyproject.toml"), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_module_lives_in_a_layer():
    top = sorted(p.name for p in (ROOT / "nbhelpers").iterdir() if not p.name.startswith("__"))
    assert top == sorted(LAYERS), top


def test_the_layer_contract_is_kept():
    r = _lint(ROOT, ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 kept, 0 broken" in r.stdout


def test_a_wrong_arrow_breaks_the_contract(tmp_path: Path):
    """core importing reporting (an upward arrow, even inside a function) fails the check."""
    shutil.copytree(
        ROOT / "nbhelpers", tmp_path / "nbhelpers", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    paths = tmp_path / "nbhelpers" / "core" / "paths.py"
    paths.write_text(
        paths.read_text() + "\n\ndef _wrong():\n    from nbhelpers.reporting import runner\n"
    )
    r = _lint(tmp_path, tmp_path)
    assert r.returncode != 0 and "BROKEN" in r.stdout, r.stdout + r.stderr
    assert "nbhelpers.core.paths -> nbhelpers.reporting.runner" in r.stdout, r.stdout


#: The longest a module may be (all its lines) and a function outside ``lessons/`` (its statements,
#: from the first after the docstring to the last; docstrings do not count).
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 60


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0


def test_no_module_over_500_lines_and_no_long_function_outside_lessons():
    long_modules, long_functions = [], []
    for path in sorted((ROOT / "nbhelpers").rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(ROOT).as_posix()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{rel}: {len(text.splitlines())} lines")
        if rel.startswith("nbhelpers/lessons/"):
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if _body_lines(node) > MAX_FUNCTION_LINES:
                    long_functions.append(f"{rel}:{node.lineno} {node.name}: {_body_lines(node)}")
    assert not long_modules, long_modules
    assert not long_functions, long_functions


def test_the_size_rule_can_fail():
    source = "def f():\n    '''doc\n    more'''\n" + "    x = 1\n" * 61
    assert _body_lines(ast.parse(source).body[0]) == 61
