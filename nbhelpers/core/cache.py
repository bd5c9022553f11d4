"""A cache on disk of trained models (``cached_model``) and of JSON results (``cached_json``).

Entries are keyed by a hash of their configuration, written atomically (temporary file, then
rename), guarded by a file lock so that two notebooks asking for the same entry compute it once,
and rebuilt when unreadable or inconsistent rather than trusted. Models are read with
``weights_only=True``."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from nbhelpers.core.params import check_int
from nbhelpers.core.paths import cache_dir
from nbhelpers.core.train import torch_threads


def runtime_key(device: str | torch.device = "cpu") -> dict[str, str]:
    """What a trained artifact depends on beyond its recipe: the torch build and the device type.

    A model trained on CUDA, or by another torch version, comes from other kernels and is another
    artifact; adding these fields to a cache configuration keeps it from being served in their
    place.

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


def cache_path(config: Mapping[str, Any], root: Path | None = None, suffix: str = ".pt") -> Path:
    """Where the entry of a configuration is kept.

    Args:
        config: the configuration; ``config["name"]``, if any, prefixes the file name.
        root: the cache folder (default ``data/cache/`` or ``$NBHELPERS_CACHE_DIR``).
        suffix: the file type, ".pt" for a model, ".json" for JSON results.

    Returns:
        The file path.
    """
    prefix = str(config.get("name", "model")).replace("/", "_")
    return Path(root or cache_dir()) / f"{prefix}-{config_key(config)}{suffix}"


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write a temporary file beside ``path`` with ``write(fh)``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``.

    Args:
        obj: what to save.
        path: the destination.
    """
    _write_atomic(path, lambda fh: torch.save(obj, fh))


def _config_json(config: Mapping[str, Any]) -> Any:
    """The configuration as it reads back from JSON (keys sorted, other types as strings)."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def _item(obj: Any) -> Any:
    """A NumPy scalar as the Python number it holds (for ``json.dumps``); anything else refused."""
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    raise TypeError(f"not JSON-able: {type(obj).__name__}")


def load_json(path: Path, config: Mapping[str, Any]) -> tuple[bool, Any]:
    """The JSON value stored at ``path`` for this configuration.

    Args:
        path: the cache file.
        config: the configuration the value must have been stored for.

    Returns:
        (True, value), or (False, None) when the file is missing, unreadable or for another config.
    """
    try:
        payload = json.loads(path.read_text())
        if payload["config"] == _config_json(config):
            return True, payload["value"]
    except (OSError, ValueError, KeyError, TypeError):  # missing, corrupt, foreign: rebuild
        pass
    return False, None


def store_json(path: Path, config: Mapping[str, Any], value: Any) -> Any:
    """Write a JSON value with its configuration atomically to ``path``.

    Args:
        path: the cache file.
        config: the configuration the value belongs to.
        value: JSON-able data.

    Returns:
        The value as it reads back from the file (tuples become lists, and so on).
    """
    text = json.dumps({"config": _config_json(config), "value": value}, default=_item)
    _write_atomic(path, lambda fh: fh.write(text.encode()))
    return json.loads(text)["value"]


def cached_json(
    config: Mapping[str, Any], compute: Callable[[], Any], root: Path | None = None
) -> tuple[Any, bool]:
    """Load JSON results from the cache, or compute and store them (locked, written atomically).

    Args:
        config: everything the results depend on; ``config["name"]``, if any, prefixes the file.
        compute: makes the JSON-able results on a miss (run once however many ask at once).
        root: the cache folder.

    Returns:
        (results as read back from JSON, hit) where ``hit`` tells whether they came from the cache.
    """
    path = cache_path(config, root, suffix=".json")
    with _locked(path):
        found, value = load_json(path, config)
        if found:
            return value, True
        return store_json(path, config, compute()), False


def _try_load(path: Path, config: Mapping[str, Any], model: nn.Module) -> dict | None:
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if json.loads(blob["config"]) != json.loads(
            json.dumps(config, sort_keys=True, default=str)
        ):
            return None
        model.load_state_dict(blob["state_dict"])
        return blob
    except Exception:  # corrupt, truncated, foreign or stale: rebuild, never trust
        return None


#: CPU threads every cached model is trained on, whoever asks first and whatever their own setting:
#: float sums depend on how kernels split the work, so a baseline trained first by a notebook on one
#: thread (``make report``, two notebooks at a time) and one trained on two (``make bench``) would
#: differ slightly, and so would every figure built on them. Part of every entry's key.
TRAIN_THREADS = 1


def cached_model(
    config: Mapping[str, Any],
    build: Callable[[], nn.Module],
    train: Callable[[nn.Module], Mapping[str, Any]],
    root: Path | None = None,
    threads: int = TRAIN_THREADS,
) -> tuple[nn.Module, dict[str, Any], bool]:
    """Load a trained model from the cache, or build, train and store it.

    Args:
        config: everything that determines the trained weights (dataset, arch, seed, epochs...);
            ``threads`` is added to it as "train_threads".
        build: makes the untrained model.
        train: trains the model in place (on ``threads`` CPU threads; the caller's count is
            restored after) and returns JSON-able extras to keep (e.g. history).
        root: the cache folder.
        threads: CPU threads to train on (default ``TRAIN_THREADS``, what every shared model
            uses); another count is another entry, so a model trained faster on more threads
            never stands in for the shared one.

    Returns:
        (model on the CPU, extras, hit) where ``hit`` tells whether it came from the cache.
    """
    check_int("threads", threads, minimum=1)
    config = {**config, "train_threads": threads}
    path = cache_path(config, root)
    with _locked(path):
        model = build()
        blob = _try_load(path, config, model)
        if blob is not None:
            return model, json.loads(blob["extras"]), True
        with torch_threads(threads):
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
