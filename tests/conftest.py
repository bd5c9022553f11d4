"""Shared fixtures: a cache and artifacts folder for the whole test session, one thread per
kernel."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# Kernels started by papermill inherit this environment: one thread each, as pytest-xdist runs
# two workers on two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def session_root(tmp_path_factory) -> Path:
    """A folder shared by all pytest-xdist workers of this session."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    return root


@pytest.fixture(scope="session", autouse=True)
def shared_cache(session_root) -> Path:
    """Point the trained-model cache at a folder of this test session (never the repo's
    data/cache)."""
    cache = session_root / "model-cache"
    cache.mkdir(exist_ok=True)
    os.environ["NBHELPERS_CACHE_DIR"] = str(cache)
    return cache
