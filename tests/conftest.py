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


#: Markers of the tests that take seconds to tens of seconds (a kernel, processes, a wheel).
SLOW = ("notebook", "package", "cluster")


def pytest_collection_modifyitems(config, items) -> None:
    """Put the slow tests first, the last collected of them (notebook 11, the heaviest) first.

    pytest-xdist hands tests out in this order, so the long ones start while the short ones fill
    the gaps, instead of one long test running alone at the end of the session.
    """
    slow = [i for i in items if any(i.get_closest_marker(m) for m in SLOW)]
    rest = [i for i in items if not any(i.get_closest_marker(m) for m in SLOW)]
    items[:] = slow[::-1] + rest


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
