"""nbhelpers.data: shipped datasets, deterministic stratified splits, loaders, user MNIST files."""

import gzip

import numpy as np
import pytest

from nbhelpers.data import load_arrays, load_mnist_files, load_split, loaders
from nbhelpers.params import ParameterError


@pytest.fixture(scope="module")
def split():
    return load_split("mnist5k", seed=3)


def test_split_sizes_and_disjoint(split):
    assert split.sizes() == {"train": 3500, "val": 500, "test": 1000}
    parts = [set(split.indices[k].tolist()) for k in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(parts[0] | parts[1] | parts[2]) == 5000


def test_split_is_stratified(split):
    for part, n in split.sizes().items():
        counts = np.bincount(split.part(part)[1], minlength=10)
        assert counts.tolist() == [n // 10] * 10


def test_split_deterministic_per_seed(split):
    again = load_split("mnist5k", seed=3)
    other = load_split("mnist5k", seed=4)
    assert np.array_equal(again.indices["test"], split.indices["test"])
    assert np.array_equal(again.X_train, split.X_train)
    assert not np.array_equal(other.indices["test"], split.indices["test"])


def test_arrays_are_unit_scaled():
    X, y, shape = load_arrays("mnist5k")
    assert X.shape == (5000, 1, 28, 28) and shape == (1, 28, 28) and X.dtype == np.float32
    assert X.min() == 0.0 and X.max() == 1.0 and y[:500].tolist() == [0] * 500  # shipped sorted


def test_digits_shapes_and_loaders():
    s = load_split("digits", seed=0)
    assert s.image_shape == (1, 8, 8) and sum(s.sizes().values()) == 1797
    dl = loaders(s, batch_size=32, flat=True)
    x, y = next(iter(dl["train"]))
    assert x.shape == (32, 64) and y.shape == (32,)
    x, _ = next(iter(loaders(s, batch_size=32)["test"]))
    assert x.shape == (360, 1, 8, 8)


def test_limit_keeps_stratified_subset():
    s = load_split("mnist5k", seed=0, limit=1000)
    assert s.sizes() == {"train": 700, "val": 100, "test": 200}
    assert np.bincount(s.y_test).tolist() == [20] * 10


def test_train_loader_shuffle_is_seeded(split):
    a = next(iter(loaders(split, seed=1)["train"]))[1]
    b = next(iter(loaders(split, seed=1)["train"]))[1]
    c = next(iter(loaders(split, seed=2)["train"]))[1]
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()


def test_unknown_dataset_lists_choices():
    with pytest.raises(ParameterError, match="DATASET='cifar'.*'mnist5k', 'digits', 'mnist'"):
        load_split("cifar")


def test_mnist_without_files_names_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NBHELPERS_DATA_DIR", str(tmp_path))
    with pytest.raises(ParameterError, match=r"DATASET='mnist'.*mnist\.npz.*train-images-idx3-ubyte"):
        load_split("mnist")
    with pytest.raises(ParameterError, match=str(tmp_path / "mnist")):
        load_split("mnist")


def _write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_mnist_from_idx_and_npz_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    xtr, ytr = rng.integers(0, 256, (60, 28, 28)), np.repeat(np.arange(10), 6)
    xte, yte = rng.integers(0, 256, (40, 28, 28)), np.repeat(np.arange(10), 4)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name, arr in [("train-images-idx3-ubyte", xtr), ("train-labels-idx1-ubyte", ytr),
                      ("t10k-images-idx3-ubyte", xte), ("t10k-labels-idx1-ubyte", yte)]:
        _write_idx(folder / f"{name}.gz", arr)
    X, y = load_mnist_files(folder)
    assert np.array_equal(X, np.concatenate([xtr, xte])) and np.array_equal(y, np.concatenate([ytr, yte]))
    monkeypatch.setenv("NBHELPERS_DATA_DIR", str(tmp_path))
    s = load_split("mnist", seed=0)
    assert s.sizes() == {"train": 70, "val": 10, "test": 20} and s.image_shape == (1, 28, 28)
    np.savez(folder / "mnist.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    X2, y2 = load_mnist_files(folder)
    assert np.array_equal(X2, X) and np.array_equal(y2, y)
