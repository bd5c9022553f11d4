"""The package's layers: core <- measure <- techniques <- lessons <- reporting, checked by
import-linter's contract in pyproject.toml, which must also be able to fail."""

from __future__ import annotations

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
