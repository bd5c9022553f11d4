"""A cache of trained models on disk, keyed by a hash of their configuration.

Files are written atomically (temporary file, then rename), read with ``weights_only=True``,
guarded by a file lock so that two notebooks asking for the same model train it once, and
rebuilt when unreadable or inconsistent rather than trusted.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .paths import cache_dir


def runtime_key(device: str | torch.device = "cpu") -> dict[str, str]:
    """What a trained artifact depends on beyond its recipe: the torch build and the device type.

    A model trained on CUDA, or by another torch version, comes from other kernels and is another
    artifact; adding these fields to a cache configuration keeps it from being served in their place.

    Args:
        device: the device the artifact is (or would be) computed on.

    Returns:
        {"torch": torch's version string (e.g. "2.13.0+cpu"), "device_type": "cpu" or "cuda"}.
    """
    return {"torch": torch.__version__, "device_type": torch.device(device).type}


def config_key(config: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-able configuration.

    Args:
        config: the configuration (order of keys does not matter).

    Returns:
        16 hexadecimal characters.
    """
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(config: Mapping[str, Any], root: Path | None = None) -> Path:
    """Where the model of a configuration is kept.

    Args:
        config: the configuration; ``config["name"]``, if any, prefixes the file name.
        root: the cache folder (default ``data/cache/`` or ``$NBHELPERS_CACHE_DIR``).

    Returns:
        The file path.
    """
    prefix = str(config.get("name", "model")).replace("/", "_")
    return Path(root or cache_dir()) / f"{prefix}-{config_key(config)}.pt"


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``.

    Args:
        obj: what to save.
        path: the destination.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _try_load(path: Path, config: Mapping[str, Any], model: nn.Module) -> dict | None:
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if json.loads(blob["config"]) != json.loads(json.dumps(config, sort_keys=True, default=str)):
            return None
        model.load_state_dict(blob["state_dict"])
        return blob
    except Exception:  # corrupt, truncated, foreign or stale: rebuild, never trust
        return None


def cached_model(
    config: Mapping[str, Any],
    build: Callable[[], nn.Module],
    train: Callable[[nn.Module], Mapping[str, Any]],
    root: Path | None = None,
) -> tuple[nn.Module, dict[str, Any], bool]:
    """Load a trained model from the cache, or build, train and store it.

    Args:
        config: everything that determines the trained weights (dataset, arch, seed, epochs...).
        build: makes the untrained model.
        train: trains the model in place and returns JSON-able extras to keep (e.g. history).
        root: the cache folder.

    Returns:
        (model on the CPU, extras, hit) where ``hit`` tells whether it came from the cache.
    """
    path = cache_path(config, root)
    with _locked(path):
        model = build()
        blob = _try_load(path, config, model)
        if blob is not None:
            return model, json.loads(blob["extras"]), True
        model = build()
        extras = dict(train(model) or {})
        model.cpu()
        save_atomic(
            {
                "config": json.dumps(config, sort_keys=True, default=str),
                "state_dict": model.state_dict(),
                "extras": json.dumps(extras, default=str),
            },
            path,
        )
        return model, extras, False
