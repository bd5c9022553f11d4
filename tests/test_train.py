"""nbhelpers.core.train: reproducible fitting, history, schedulers and hooks."""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nbhelpers.core.data import load_split, loaders
from nbhelpers.core.models import MLP
from nbhelpers.core.params import ParameterError
from nbhelpers.core.train import (
    can_fuse,
    evaluate,
    fit,
    make_optimizer,
    module_device,
    predict,
    seed_everything,
)


@pytest.fixture(scope="module")
def split():
    return load_split("digits", seed=0)


def _fit(split, **kw):
    """Fit a small MLP on fresh loaders (a loader's shuffle generator advances as it is used)."""
    dl = loaders(split, batch_size=64, flat=True, seed=0)
    seed_everything(0)
    model = MLP(64, hidden=[32])
    hist = fit(model, dl["train"], dl["val"], progress=False, **{"epochs": 2, **kw})
    return model, hist


def test_fit_is_reproducible_and_learns(split):
    m1, h1 = _fit(split, epochs=5)
    dl = loaders(split, batch_size=64, flat=True)
    m2, h2 = _fit(split, epochs=5)
    assert list(h1.columns) == [
        "epoch",
        "lr",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "epoch_seconds",
    ]
    assert h1.drop(columns="epoch_seconds").equals(h2.drop(columns="epoch_seconds"))
    assert all(
        torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values())
    )
    assert (
        h1["val_accuracy"].iloc[-1] > 0.8 and h1["train_loss"].iloc[-1] < h1["train_loss"].iloc[0]
    )
    assert evaluate(m1, dl["val"])["accuracy"] == pytest.approx(h1["val_accuracy"].iloc[-1])


def test_epoch_and_batch_schedulers(split):
    _, h = _fit(
        split,
        epochs=3,
        lr=0.1,
        optimizer="sgd",
        scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5),
    )
    assert h["lr"].tolist() == [0.1, 0.05, 0.025]
    steps = len(loaders(split, batch_size=64)["train"])
    _, h = _fit(
        split,
        epochs=2,
        lr=1.0,
        optimizer="sgd",
        scheduler_step="batch",
        scheduler=lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9),
    )
    assert h["lr"].tolist() == pytest.approx([1.0, 0.9**steps])


def test_plateau_steps_on_validation_loss(split):
    _, h = _fit(
        split,
        epochs=3,
        lr=1e-6,
        optimizer="sgd",
        scheduler=lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.1, patience=0),
    )
    assert h["lr"].iloc[-1] < 1e-6  # no progress at a tiny lr: the plateau rule cut it


def test_validate_last_scores_once_and_trains_the_same(split):
    m1, every = _fit(split, epochs=3)
    m2, last = _fit(split, epochs=3, validate="last")
    assert all(
        torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values())
    )
    assert last["val_accuracy"].iloc[:2].isna().all() and every["val_accuracy"].notna().all()
    tail = ["train_loss", "val_loss", "val_accuracy"]
    assert last[tail].iloc[-1].tolist() == every[tail].iloc[-1].tolist()
    _, diverged = _fit(
        split, epochs=5, validate="last", loss_fn=lambda logits, y, x: logits.sum() * float("inf")
    )
    assert len(diverged) == 1 and diverged["val_accuracy"].notna().all()  # scored where it stopped
    plateau = lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o)  # noqa: E731
    with pytest.raises(ParameterError, match="validate"):
        _fit(split, validate="last", scheduler=plateau)
    with pytest.raises(ParameterError, match="validate"):
        _fit(split, validate="first")


def test_hooks_are_called(split):
    calls = {"loss": 0, "extra": 0, "after": 0}

    def loss_fn(logits, y, x):
        calls["loss"] += 1
        assert x.shape[0] == y.shape[0]
        return F.cross_entropy(logits, y)

    def extra(model):
        calls["extra"] += 1
        return torch.zeros(())

    def after(model):
        calls["after"] += 1

    _fit(split, epochs=1, loss_fn=loss_fn, extra_loss=extra, after_step=after)
    n = len(loaders(split, batch_size=64)["train"])
    assert calls == {"loss": n, "extra": n, "after": n}


def test_stops_on_divergence(split):
    _, h = _fit(split, epochs=5, loss_fn=lambda logits, y, x: logits.sum() * float("inf"))
    assert len(h) == 1 and not math.isfinite(h["train_loss"].iloc[0])


def test_adam_and_adamw_use_the_fused_kernel_where_it_exists():
    model = MLP(64, [8])
    assert can_fuse(list(model.parameters())) and not can_fuse([])
    assert not can_fuse(list(MLP(64, [8]).to("meta").parameters()))  # no fused kernel there
    assert not can_fuse([torch.zeros(2, dtype=torch.long)])
    for name in ("adam", "adamw"):
        assert make_optimizer(model, name).defaults["fused"] is True
    assert not make_optimizer(model, "sgd").defaults.get("fused")  # SGD keeps PyTorch's default
    assert make_optimizer(model.to("meta"), "adam").defaults["fused"] is None


def test_fused_adam_is_the_same_rule_as_the_for_loop_adam():
    """One fused step equals the for-loop step to float rounding (the rule is unchanged)."""
    torch.manual_seed(0)
    a, b = MLP(64, [8]), MLP(64, [8])
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    fused = make_optimizer(a, "adamw", 0.01, weight_decay=0.1)
    loop = torch.optim.AdamW(b.parameters(), lr=0.01, weight_decay=0.1, foreach=False)
    for model, opt in ((a, fused), (b, loop)):
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        # three steps of at most lr each: float32 rounding of values below 1 is ~6e-8 per op
        assert torch.allclose(p, q, rtol=0, atol=1e-6)


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="optimizer='rmsprop'"):
        make_optimizer(MLP(64, [8]), "rmsprop")


def test_module_device():
    assert module_device(nn.ReLU()) == torch.device("cpu")  # no tensors: the CPU
    assert module_device(nn.Linear(2, 2).to("meta")) == torch.device("meta")
    buffers_only = nn.BatchNorm1d(2, affine=False).to("meta")
    assert module_device(buffers_only) == torch.device("meta")


class _Recorder(nn.Module):
    """Records the device of its inputs; its logits are CPU zeros."""

    def __init__(self):
        super().__init__()
        self.register_buffer("anchor", torch.zeros(1))
        self.seen: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.device.type)
        return torch.zeros(len(x), 2)


def test_predict_and_evaluate_run_where_the_model_is():
    model, loader = _Recorder(), [(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))]
    assert evaluate(model, loader, device="meta") == {
        "loss": pytest.approx(math.log(2)),
        "accuracy": 1.0,
    }
    assert module_device(model) == torch.device("meta")  # an explicit device moves the model
    logits, labels = predict(model, loader)  # no device: where the model is
    assert model.seen == ["meta", "meta"] and logits.shape == (4, 2) and labels.device.type == "cpu"


@pytest.fixture()
def restore_determinism(monkeypatch):
    flags = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    det = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags
    torch.use_deterministic_algorithms(det, warn_only=warn)


def test_seed_everything_sets_the_gpu_flags(restore_determinism, monkeypatch):
    seeds = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeds.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    seed_everything(7)
    assert 7 in seeds
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert not torch.are_deterministic_algorithms_enabled()  # a CPU-only machine keeps its kernels
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    seed_everything(7)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_anneal_is_none_or_a_cosine_to_zero():
    from nbhelpers.core.params import ParameterError
    from nbhelpers.core.train import anneal

    assert anneal("constant", 5) is None
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.4)
    sched = anneal("cosine", 4)(opt)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs == pytest.approx(
        [0.4, 0.4 * (1 + math.cos(math.pi / 4)) / 2, 0.2, 0.4 * (1 + math.cos(3 * math.pi / 4)) / 2]
    )
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ParameterError, match="schedule"):
        anneal("step", 4)


def test_torch_threads_restores_the_count_even_on_error():
    from nbhelpers.core.train import torch_threads

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be an integer >= 1, got 0"):
        with torch_threads(0):
            pass
    assert torch.get_num_threads() == before
