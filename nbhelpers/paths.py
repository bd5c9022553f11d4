"""Where the project keeps data, the model cache and reports."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


def data_dir() -> Path:
    """The data folder: ``$NBHELPERS_DATA_DIR``, else the repository's ``data/``.

    Returns:
        The path (it may not exist yet).
    """
    env = os.environ.get("NBHELPERS_DATA_DIR")
    return Path(env) if env else REPO_DIR / "data"


def cache_dir() -> Path:
    """The trained-model cache: ``$NBHELPERS_CACHE_DIR``, else ``data/cache/``.

    Returns:
        The path (it may not exist yet).
    """
    env = os.environ.get("NBHELPERS_CACHE_DIR")
    return Path(env) if env else data_dir() / "cache"
