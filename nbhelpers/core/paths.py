"""Where the project keeps data, the model cache and reports: resolved from the working directory
or environment variables, never from where the package is installed."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def project_dir(start: str | Path | None = None) -> Path:
    """The folder that ``data/``, ``reports/``, ``notebooks/`` and ``docs/`` are resolved against.

    ``$NBHELPERS_PROJECT_DIR`` when set; else the nearest of the working directory and its parents
    that holds a ``notebooks/`` folder (this repository, whether a kernel runs in ``notebooks/`` or
    a command at the root); else the working directory itself (the package installed with pip and
    used in a project of one's own).

    Args:
        start: where to start looking (default: the working directory).

    Returns:
        The folder (absolute).
    """
    env = os.environ.get("NBHELPERS_PROJECT_DIR")
    if env:
        return Path(env).resolve()
    here = Path(start or Path.cwd()).resolve()
    return next((d for d in (here, *here.parents) if (d / "notebooks").is_dir()), here)


def data_dir() -> Path:
    """The data folder: ``$NBHELPERS_DATA_DIR``, else ``data/`` of ``project_dir()``.

    Returns:
        The path (it may not exist yet).
    """
    env = os.environ.get("NBHELPERS_DATA_DIR")
    return Path(env) if env else project_dir() / "data"


def cache_dir() -> Path:
    """The trained-model cache: ``$NBHELPERS_CACHE_DIR``, else ``data/cache/``.

    Returns:
        The path (it may not exist yet).
    """
    env = os.environ.get("NBHELPERS_CACHE_DIR")
    return Path(env) if env else data_dir() / "cache"


def reports_dir() -> Path:
    """Executed notebooks, HTML and artifacts: ``$NBHELPERS_REPORTS_DIR``, else ``reports/``.

    Returns:
        The path (it may not exist yet).
    """
    env = os.environ.get("NBHELPERS_REPORTS_DIR")
    return Path(env) if env else project_dir() / "reports"
