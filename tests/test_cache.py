"""nbhelpers.core.cache: a hit gives identical weights; corrupt or stale files are rebuilt;
concurrent
safe."""

import threading
import time

import pytest
import torch

from nbhelpers.core.cache import TRAIN_THREADS, cache_path, cached_model, config_key
from nbhelpers.core.models import MLP
from nbhelpers.core.params import ParameterError

CONFIG = {"name": "unit", "seed": 1, "epochs": 2}


def _build():
    torch.manual_seed(1)
    return MLP(16, hidden=[8])


def _trainer(counter):
    def train(model):
        counter.append(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))  # stands in for training: weights differ from the build
        return {"history": {"epoch": [1, 2]}}

    return train


def test_key_is_order_independent():
    assert (
        config_key({"a": 1, "b": 2}) == config_key({"b": 2, "a": 1}) != config_key({"a": 1, "b": 3})
    )


def test_hit_returns_identical_weights(tmp_path):
    calls = []
    m1, extras1, hit1 = cached_model(CONFIG, _build, _trainer(calls), tmp_path)
    m2, extras2, hit2 = cached_model(CONFIG, _build, _trainer(calls), tmp_path)
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    assert extras1 == extras2 == {"history": {"epoch": [1, 2]}}
    assert all(
        torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values())
    )
    assert not torch.equal(m2[1].weight, _build()[1].weight)


def test_corrupt_file_is_rebuilt(tmp_path):
    calls = []
    cached_model(CONFIG, _build, _trainer(calls), tmp_path)
    path = cache_path({**CONFIG, "train_threads": TRAIN_THREADS}, tmp_path)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    _, _, hit = cached_model(CONFIG, _build, _trainer(calls), tmp_path)
    assert (hit, len(calls)) == (False, 2)
    _, _, hit = cached_model(CONFIG, _build, _trainer(calls), tmp_path)
    assert (hit, len(calls)) == (True, 2)


def _thread_recorder(seen: list) -> object:
    """A ``train`` for ``cached_model`` that notes the thread count it ran on."""

    def train(model):
        seen.append(torch.get_num_threads())
        return {}

    return train


def test_trained_on_the_same_threads_whoever_asks(tmp_path):
    seen = []
    train = _thread_recorder(seen)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        cached_model(CONFIG, _build, train, tmp_path)
        assert seen == [TRAIN_THREADS] and torch.get_num_threads() == 2  # the caller's, restored
    finally:
        torch.set_num_threads(before)
    assert cache_path({**CONFIG, "train_threads": TRAIN_THREADS}, tmp_path).exists()
    assert not cache_path(CONFIG, tmp_path).exists()  # the thread count is part of the key


def test_a_model_asked_for_on_more_threads_is_another_entry(tmp_path):
    seen = []
    train = _thread_recorder(seen)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, _, hit_two = cached_model(CONFIG, _build, train, tmp_path, threads=2)
        _, _, hit_shared = cached_model(CONFIG, _build, train, tmp_path)  # not the 2-thread one
        _, _, again = cached_model(CONFIG, _build, train, tmp_path, threads=2)
        assert seen == [2, TRAIN_THREADS] and torch.get_num_threads() == 1
        assert (hit_two, hit_shared, again) == (False, False, True)
    finally:
        torch.set_num_threads(before)
    assert cache_path({**CONFIG, "train_threads": 2}, tmp_path).exists()
    with pytest.raises(ParameterError, match="threads"):
        cached_model(CONFIG, _build, train, tmp_path, threads=0)


def test_file_of_another_shape_is_rebuilt(tmp_path):
    calls = []
    cached_model(CONFIG, lambda: MLP(16, hidden=[4]), _trainer(calls), tmp_path)
    _, _, hit = cached_model(CONFIG, _build, _trainer(calls), tmp_path)
    assert (hit, len(calls)) == (False, 2)


def test_concurrent_requests_train_once(tmp_path):
    calls = []

    def slow(model):
        time.sleep(0.3)
        return _trainer(calls)(model)

    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(cached_model(CONFIG, _build, slow, tmp_path))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(r[2] for r in results) == [False, True, True]
    assert not list(tmp_path.glob("*.tmp"))


def test_runtime_key_separates_devices_and_torch_builds():
    from nbhelpers.core.cache import runtime_key

    assert runtime_key("cpu") == {"torch": torch.__version__, "device_type": "cpu"}
    assert runtime_key("cuda:0")["device_type"] == "cuda"
    assert config_key({**CONFIG, **runtime_key("cpu")}) != config_key(
        {**CONFIG, **runtime_key("cuda")}
    )
    other = {**CONFIG, **runtime_key("cpu"), "torch": "2.12.0+cu126"}
    assert config_key(other) != config_key({**CONFIG, **runtime_key("cpu")})


def test_baseline_key_holds_device_and_torch(tmp_path, monkeypatch):
    from nbhelpers.core.baseline import get_baseline

    monkeypatch.setenv("NBHELPERS_CACHE_DIR", str(tmp_path))
    b = get_baseline("mlp", "digits", seed=0, epochs=1, limit=300, progress=False)
    assert b.config["device_type"] == "cpu" and b.config["torch"] == torch.__version__


# --- JSON results (cached_json): the same key, lock and atomic write as the models -------------

JSON_CONFIG = {"name": "unit-json", "seed": 1}


def test_json_hit_returns_what_was_stored(tmp_path):
    from nbhelpers.core.cache import cached_json

    calls = []

    def compute():
        calls.append(1)
        return {"lr": (0.1, 0.01), "mean_cv": [0.5, 0.8]}

    a, hit_a = cached_json(JSON_CONFIG, compute, tmp_path)
    b, hit_b = cached_json(JSON_CONFIG, compute, tmp_path)
    assert (hit_a, hit_b, len(calls)) == (False, True, 1)
    assert a == b == {"lr": [0.1, 0.01], "mean_cv": [0.5, 0.8]}  # a miss reads back as JSON too
    assert cache_path(JSON_CONFIG, tmp_path, suffix=".json").exists()
    assert cache_path(JSON_CONFIG, tmp_path).suffix == ".pt"  # models keep their suffix


def test_json_corrupt_or_foreign_file_is_rebuilt(tmp_path):
    import json

    from nbhelpers.core.cache import cached_json

    calls = []

    def compute():
        calls.append(1)
        return [len(calls)]

    cached_json(JSON_CONFIG, compute, tmp_path)
    path = cache_path(JSON_CONFIG, tmp_path, suffix=".json")
    path.write_text(path.read_text()[:10])  # truncated
    assert cached_json(JSON_CONFIG, compute, tmp_path) == ([2], False)
    path.write_text(json.dumps({"config": {"other": 1}, "value": [99]}))  # another configuration
    assert cached_json(JSON_CONFIG, compute, tmp_path) == ([3], False)
    assert cached_json(JSON_CONFIG, compute, tmp_path) == ([3], True)


def test_json_numpy_numbers_are_stored_and_others_refused(tmp_path):
    import numpy as np
    import pytest

    from nbhelpers.core.cache import load_json, store_json

    path = tmp_path / "x.json"
    assert store_json(path, JSON_CONFIG, {"a": np.float64(0.5), "b": np.int64(3)}) == {
        "a": 0.5,
        "b": 3,
    }
    assert load_json(path, JSON_CONFIG) == (True, {"a": 0.5, "b": 3})
    assert load_json(path, {"seed": 2}) == (False, None)
    assert load_json(tmp_path / "missing.json", JSON_CONFIG) == (False, None)
    with pytest.raises(TypeError):
        store_json(tmp_path / "y.json", JSON_CONFIG, {"a": object()})
    assert not (tmp_path / "y.json").exists() and not list(tmp_path.glob("*.tmp"))


def test_json_concurrent_requests_compute_once(tmp_path):
    from nbhelpers.core.cache import cached_json

    calls, results = [], []

    def slow():
        time.sleep(0.3)
        calls.append(1)
        return {"v": 1}

    threads = [
        threading.Thread(target=lambda: results.append(cached_json(JSON_CONFIG, slow, tmp_path)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(r[1] for r in results) == [False, True, True]
    assert all(r[0] == {"v": 1} for r in results) and not list(tmp_path.glob("*.tmp"))


def test_cosine_baseline_is_another_artifact(tmp_path, monkeypatch):
    """The schedule is part of the recipe: a cosine baseline has its own key and anneals its
    rate."""
    from nbhelpers.core.baseline import get_baseline

    monkeypatch.setenv("NBHELPERS_CACHE_DIR", str(tmp_path))
    flat = get_baseline("mlp", "digits", seed=0, epochs=2, limit=300, progress=False)
    cos = get_baseline(
        "mlp", "digits", seed=0, epochs=2, limit=300, progress=False, schedule="cosine"
    )
    assert flat.config["schedule"] == "constant" and cos.config["schedule"] == "cosine"
    assert not cos.from_cache and len(list(tmp_path.glob("*.pt"))) == 2
    assert cos.history["lr"].tolist() == pytest.approx([1e-3, 5e-4])  # cos(pi * e / 2) schedule
    with pytest.raises(ParameterError, match="BASELINE_SCHEDULE"):
        get_baseline("mlp", "digits", seed=0, epochs=2, limit=300, progress=False, schedule="step")
