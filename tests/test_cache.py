"""nbhelpers.cache: a hit gives identical weights; corrupt or stale files are rebuilt; concurrent safe."""

import threading
import time

import torch

from nbhelpers.cache import cache_path, cached_model, config_key
from nbhelpers.models import MLP

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
    assert config_key({"a": 1, "b": 2}) == config_key({"b": 2, "a": 1}) != config_key({"a": 1, "b": 3})


def test_hit_returns_identical_weights(tmp_path):
    calls = []
    m1, extras1, hit1 = cached_model(CONFIG, _build, _trainer(calls), tmp_path)
    m2, extras2, hit2 = cached_model(CONFIG, _build, _trainer(calls), tmp_path)
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    assert extras1 == extras2 == {"history": {"epoch": [1, 2]}}
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert not torch.equal(m2[1].weight, _build()[1].weight)


def test_corrupt_file_is_rebuilt(tmp_path):
    calls = []
    cached_model(CONFIG, _build, _trainer(calls), tmp_path)
    path = cache_path(CONFIG, tmp_path)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    _, _, hit = cached_model(CONFIG, _build, _trainer(calls), tmp_path)
    assert (hit, len(calls)) == (False, 2)
    _, _, hit = cached_model(CONFIG, _build, _trainer(calls), tmp_path)
    assert (hit, len(calls)) == (True, 2)


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
    threads = [threading.Thread(target=lambda: results.append(cached_model(CONFIG, _build, slow, tmp_path)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(r[2] for r in results) == [False, True, True]
    assert not list(tmp_path.glob("*.tmp"))


def test_runtime_key_separates_devices_and_torch_builds():
    from nbhelpers.cache import runtime_key

    assert runtime_key("cpu") == {"torch": torch.__version__, "device_type": "cpu"}
    assert runtime_key("cuda:0")["device_type"] == "cuda"
    assert config_key({**CONFIG, **runtime_key("cpu")}) != config_key({**CONFIG, **runtime_key("cuda")})
    other = {**CONFIG, **runtime_key("cpu"), "torch": "2.12.0+cu126"}
    assert config_key(other) != config_key({**CONFIG, **runtime_key("cpu")})


def test_baseline_key_holds_device_and_torch(tmp_path, monkeypatch):
    from nbhelpers.baseline import get_baseline

    monkeypatch.setenv("NBHELPERS_CACHE_DIR", str(tmp_path))
    b = get_baseline("mlp", "digits", seed=0, epochs=1, limit=300, progress=False)
    assert b.config["device_type"] == "cpu" and b.config["torch"] == torch.__version__
