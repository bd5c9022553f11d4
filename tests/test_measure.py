"""nbhelpers.measure: counts, bytes, accuracy of modules and callables, latency and comparison
tables."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import DataLoader, TensorDataset

from nbhelpers import measure
from nbhelpers.core.models import MLP, LeNet5
from nbhelpers.measure import (
    accuracy,
    compare,
    count_parameters,
    file_bytes,
    latency,
    serialized_bytes,
)


@pytest.fixture()
def mlp():
    torch.manual_seed(0)
    return MLP(16, hidden=[8])


def test_serialized_bytes_equal_written_file(mlp, tmp_path):
    path = tmp_path / "m.pt"
    n = serialized_bytes(mlp, path)
    assert n == path.stat().st_size == file_bytes(path) == serialized_bytes(mlp)


def test_counts_follow_pruning_masks(mlp):
    assert count_parameters(mlp) == {"params": 16 * 8 + 8 + 8 * 10 + 10, "nonzero": 226}
    prune.l1_unstructured(mlp[1], "weight", amount=64)
    assert count_parameters(mlp) == {"params": 226, "nonzero": 226 - 64}
    prune.remove(mlp[1], "weight")
    assert count_parameters(mlp) == {"params": 226, "nonzero": 226 - 64}


def test_counts_int8_dynamic(mlp):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(mlp, {nn.Linear}, dtype=torch.qint8)
    assert count_parameters(q)["params"] == 226


def _loader(n=40):
    x = torch.randn(n, 16)
    return x, DataLoader(TensorDataset(x, torch.arange(n) % 10), batch_size=16)


def test_accuracy_of_module_and_callable(mlp):
    x, dl = _loader()
    labels = torch.arange(40) % 10
    expected = float((mlp.eval()(x).argmax(1) == labels).float().mean())
    assert accuracy(mlp, dl) == pytest.approx(expected)
    assert accuracy(lambda b: mlp(b).detach().numpy(), dl) == pytest.approx(expected)
    assert (
        accuracy(
            lambda b: np.eye(10)[(torch.arange(len(b)) % 10).numpy()],
            DataLoader(TensorDataset(x, labels), batch_size=40),
        )
        == 1.0
    )


def test_latency_table(mlp):
    x, _ = _loader()
    df = latency({"a": mlp, "b": mlp}, x, batch_sizes=(1, 64), repeats=3, rounds=2, warmup=1)
    assert len(df) == 4 and set(df.batch_size) == {1, 64}
    assert (
        (df.median_ms > 0).all()
        and (df.p25_ms <= df.median_ms).all()
        and (df.median_ms <= df.p75_ms).all()
    )
    assert torch.get_num_threads() >= 1


def test_compare_ratios(mlp):
    _, dl = _loader()
    small = MLP(16, hidden=[2])
    df = compare(
        {"big": mlp, "small": small, "fn": lambda b: mlp(b)},
        dl,
        "big",
        batch_sizes=(1, 8),
        sizes={"fn": 1000},
        repeats=3,
    )
    assert df.loc["big", "size_ratio"] == 1 and df.loc["big", "speedup_b8"] == 1
    assert df.loc["small", "size_ratio"] == pytest.approx(
        df.loc["big", "bytes"] / df.loc["small", "bytes"]
    )
    assert df.loc["fn", "bytes"] == 1000 and np.isnan(df.loc["fn", "params"])
    assert df.loc["fn", "accuracy_delta_points"] == 0
    with pytest.raises(KeyError, match="give its bytes"):
        compare({"big": mlp, "fn": lambda b: mlp(b)}, dl, "big", batch_sizes=(1,), repeats=1)


def test_cuda_timing_waits_for_the_device(monkeypatch):
    """On CUDA every sample synchronizes before its clock stops; on the CPU nothing synchronizes."""
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    measure.synchronizer("cpu")()
    measure.synchronizer(None)()
    assert synced == []
    measure.synchronizer("cuda:0")()
    assert synced == ["cuda:0"]
    synced.clear()
    samples = measure.time_call(lambda: None, warmup=2, repeats=4, device=torch.device("cuda"))
    # once after the warm-up, once after the calibration call, once per sample
    assert len(samples) == 4 and synced == [torch.device("cuda")] * (2 + 4)
    synced.clear()
    measure.time_call(lambda: None, warmup=2, repeats=4, device="cpu")
    assert synced == []


def test_callables_get_cpu_tensors_and_modules_their_device(mlp):
    assert measure.input_device(mlp) == torch.device("cpu")
    assert measure.input_device(mlp.to("meta")) == torch.device("meta")
    assert measure.input_device(lambda b: b) == torch.device("cpu")


def test_compare_pairs_models_image_by_image():
    """Hand-made predictors on 200 images: the baseline is right on the first 180; "worse" loses 30
    of them and gains none (McNemar p = 2 * 0.5**30); "same" swaps 5 for 5 (p = 1)."""
    from nbhelpers.measure import stats

    y = torch.zeros(200, dtype=torch.long)
    x = torch.arange(200, dtype=torch.float32).reshape(200, 1)

    def predictor(right: np.ndarray):
        def f(batch: torch.Tensor) -> np.ndarray:
            idx = batch[:, 0].long().numpy()
            logits = np.zeros((len(idx), 2), dtype=np.float32)
            logits[:, 0] = np.where(right[idx], 1.0, -1.0)  # class 0 is the label
            return logits

        return f

    base = np.arange(200) < 180
    worse = np.arange(200) < 150
    same = base.copy()
    same[:5], same[180:185] = False, True
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    models = {"base": predictor(base), "worse": predictor(worse), "same": predictor(same)}
    df = measure.compare(
        models, loader, "base", batch_sizes=(1,), sizes={k: 1 for k in models}, repeats=1
    )
    assert df.loc["base", "verdict"] == "baseline" and np.isnan(df.loc["base", "p_mcnemar"])
    assert df.loc["worse", "accuracy_delta_points"] == pytest.approx(-15.0)
    assert df.loc["worse", "p_mcnemar"] == pytest.approx(2 * 0.5**30)
    assert df.loc["worse", "verdict"] == "worse" and df.loc["worse", "delta_high_points"] < 0
    assert df.loc["same", "accuracy_delta_points"] == 0 and df.loc["same", "p_mcnemar"] == 1.0
    assert df.loc["same", "verdict"] == "within noise"
    want = stats.paired_difference(base, worse)
    assert df.loc["worse", "delta_low_points"] == pytest.approx(want["low"])
    lo, hi = stats.wilson_interval(180, 200)
    assert (df.loc["base", "accuracy_low"], df.loc["base", "accuracy_high"]) == pytest.approx(
        (lo, hi)
    )

    # hits measured before are used as given: the predictor is not asked again
    def refuse(batch: torch.Tensor) -> np.ndarray:
        raise AssertionError("called for its accuracy although its hits were given")

    timed_only = {**models, "worse": lambda b: refuse(b) if len(b) > 1 else models["worse"](b)}
    again = measure.compare(
        timed_only,
        loader,
        "base",
        batch_sizes=(1,),
        sizes={k: 1 for k in models},
        repeats=1,
        hits={"worse": worse},
    )
    cols = ["accuracy", "delta_low_points", "delta_high_points", "p_mcnemar", "verdict"]
    pd.testing.assert_frame_equal(again[cols], df[cols])
    with pytest.raises(ValueError, match=r"hits\['worse'\].*200"):
        measure.compare(
            models, loader, "base", (1,), {k: 1 for k in models}, hits={"worse": base[:9]}
        )
    with pytest.raises(ValueError, match=r"hits\['other'\]"):
        measure.compare(models, loader, "base", (1,), {k: 1 for k in models}, hits={"other": base})


def test_compare_refuses_a_shuffling_loader():
    data = TensorDataset(torch.rand(8, 4), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="shuffle"):
        measure.compare({"m": torch.nn.Linear(4, 2)}, DataLoader(data, shuffle=True), "m")


# ---------------------------------------------------------------- cost counters and kernel timings


def test_count_macs_known():
    assert (
        measure.count_macs(MLP(784, (300, 100)), torch.zeros(1, 784))
        == 784 * 300 + 300 * 100 + 100 * 10
    )
    int8 = torch.ao.quantization.quantize_dynamic(
        MLP(784, (300, 100)), {nn.Linear}, dtype=torch.qint8
    )
    assert (
        measure.count_macs(int8, torch.zeros(1, 784)) == 784 * 300 + 300 * 100 + 100 * 10
    )  # int8 counts too
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 1))
    assert measure.count_macs(conv, torch.zeros(1, 1, 6, 6)) == 2 * 9 * 16 + 32


def test_layer_times_one_row_per_layer():
    m = LeNet5((1, 8, 8)).eval()
    t = measure.layer_times(m, torch.rand(4, 1, 8, 8), repeats=3)
    assert list(t.index) == [f"{i} {type(x).__name__}" for i, x in enumerate(m)] and (t > 0).all()


def test_prediction_shift_on_hand_made_logits():
    """Four samples of classes 0, 0, 1, 2; the reference is right on all of them."""
    labels = torch.tensor([0, 0, 1, 2])
    reference = torch.eye(3)[labels] * 2.0  # one-hot logits of size 2
    same = measure.prediction_shift(reference / 2, labels, reference)
    assert same == {
        "accuracy": 1.0,
        "agreement": 1.0,
        "worst_class_accuracy": 1.0,
        "top_class_share": 0.5,  # class 0 gets two of the four samples
        "logit_scale": 0.5,
        "logit_correlation": pytest.approx(1.0),
    }
    collapsed = torch.tensor([[1.0, 0, 0]] * 4)  # every sample to class 0
    shift = measure.prediction_shift(collapsed, labels, reference)
    assert shift["accuracy"] == 0.5 and shift["agreement"] == 0.5
    assert shift["worst_class_accuracy"] == 0.0 and shift["top_class_share"] == 1.0
    assert shift["logit_scale"] == pytest.approx(2.0 / (2.0 * 4**0.5))  # norm 2 over norm 4
    # correlation of [1,0,0]x4 with the one-hot rows of [0,0,1,2] (times 2), by hand:
    x = collapsed.flatten().double()
    r = reference.flatten().double()
    want = float(
        ((x - x.mean()) * (r - r.mean())).sum() / ((x - x.mean()).norm() * (r - r.mean()).norm())
    )
    assert shift["logit_correlation"] == pytest.approx(want)
    assert tuple(shift) == measure.SHIFT_COLUMNS
    with pytest.raises(ValueError, match=r"logits \(4, 2\) and reference \(4, 3\)"):
        measure.prediction_shift(collapsed[:, :2], labels, reference)
    with pytest.raises(ValueError, match="len\\(labels\\) = 3"):
        measure.prediction_shift(collapsed, labels[:3], reference)
