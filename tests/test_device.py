"""Every helper keeps its tensors on the device of its model or input: checked without a GPU.

A fake device stands in for CUDA. Its tensors report the ``meta`` device but hold real values,
computed on the CPU (``FakeDeviceTensor`` unwraps them in ``__torch_dispatch__``), so helpers run
to the end and their results can be compared with a plain CPU run, exactly. Like CUDA, the fake
device refuses any operation that mixes its tensors with CPU tensors (CPU scalars without
dimensions and explicit copies aside, which CUDA allows too) and refuses ``.numpy()``: a helper
that builds a tensor on the CPU (``torch.tensor(q)``, ``torch.arange(n)``, a mask) next to its
input, or feeds CPU batches to a model that sits elsewhere, raises ``DeviceMismatch`` here as it
raises on a GPU. Each check takes a ``Place``; ``test_gpu.py`` runs the same checks on CUDA.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Self

import numpy as np
import pandas as pd
import pytest
import torch
import torch._dynamo
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset

from nbhelpers import measure
from nbhelpers.core.models import MLP, LeNet5
from nbhelpers.core.train import evaluate, fit, module_device, predict
from nbhelpers.techniques import distillation as KD
from nbhelpers.techniques import neuron_pruning as NP
from nbhelpers.techniques import normalization as N
from nbhelpers.techniques import pruning as P
from nbhelpers.techniques import schedules as S

FAKE = torch.device("meta")


# ---------------------------------------------------------------- the fake device


class DeviceMismatch(RuntimeError):
    """An operation mixed tensors of the fake device with CPU tensors."""


class FakeDeviceTensor(torch.Tensor):
    """A tensor that reports the ``meta`` device and keeps its values in a CPU tensor ``elem``."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> Self:
        r = torch.Tensor._make_wrapper_subclass(
            cls,
            elem.size(),
            strides=elem.stride(),
            storage_offset=elem.storage_offset(),
            dtype=elem.dtype,
            layout=elem.layout,
            device=FAKE,
            requires_grad=elem.requires_grad,
        )
        r.elem = elem
        return r

    @property
    def data(self) -> FakeDeviceTensor:
        """A detached alias, on the fake device."""
        return FakeDeviceTensor(self.elem)

    @data.setter
    def data(self, value: torch.Tensor) -> None:
        """``p.data = t`` (``prune.remove`` does it): the values of ``t`` become this tensor's."""
        if not isinstance(value, FakeDeviceTensor):
            raise DeviceMismatch(f"a tensor on the device gets the data of a {value.device} tensor")
        torch._C.TensorBase.data.__set__(self, value)  # shape and strides
        self.elem = value.elem

    def tolist(self) -> list:
        """The values (``Tensor.tolist`` refuses tensor subclasses)."""
        return self.elem.tolist()

    def numpy(self, *args, **kwargs) -> np.ndarray:
        """Refused, as for a CUDA tensor."""
        raise TypeError("can't convert meta device type tensor to numpy. Use Tensor.cpu() first")

    def __repr__(self) -> str:
        return f"FakeDeviceTensor({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run_op(func, args, kwargs or {})


_COPIES = (torch.ops.aten.copy_.default,)  # cross-device copies are legal on CUDA too


def _run_op(func, args: tuple, kwargs: dict):
    """Run an aten op on the CPU values; wrap the results that belong on the fake device."""
    tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    fakes = [t for t in tensors if isinstance(t, FakeDeviceTensor)]
    plain = [t for t in tensors if not isinstance(t, FakeDeviceTensor)]
    if any(t.device.type == "meta" for t in plain):
        raise DeviceMismatch(f"{func}: a meta tensor without values (made outside the fake device)")
    if fakes and func not in _COPIES and any(t.dim() > 0 for t in plain):
        shapes = [tuple(t.shape) for t in plain if t.dim() > 0]
        raise DeviceMismatch(f"{func} mixes tensors on the device with CPU tensors {shapes}")
    device = kwargs.get("device")
    wrap = torch.device(device).type == "meta" if device is not None else bool(fakes)
    if device is not None and wrap:
        kwargs = {**kwargs, "device": torch.device("cpu")}
    by_elem = {id(t.elem): t for t in fakes}  # in-place ops and out= return their argument
    args, kwargs = pytree.tree_map_only(FakeDeviceTensor, lambda t: t.elem, (args, kwargs))
    out = func(*args, **kwargs)

    def back(t: torch.Tensor) -> torch.Tensor:
        if not wrap:  # e.g. ``.to("cpu")``, which may return the values themselves
            return t
        return by_elem[id(t)] if id(t) in by_elem else FakeDeviceTensor(t)

    return pytree.tree_map_only(torch.Tensor, back, out)


class _FakeDispatch(TorchDispatchMode):
    """Every aten op, factories with ``device="meta"`` included, goes through ``_run_op``."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run_op(func, args, kwargs or {})


_DATA_FACTORIES = (torch.tensor, torch.as_tensor, torch.asarray, torch.Tensor.new_tensor)


class _FakeDataFactories(TorchFunctionMode):
    """``torch.tensor(data, device=...)`` and its kin skip the dispatcher: make on the CPU, wrap."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DATA_FACTORIES:
            device = kwargs.get("device")
            if func is torch.Tensor.new_tensor:
                self_, args = args[0], args[1:]
                kwargs = {"dtype": self_.dtype, **kwargs}
                device, func = (self_.device if device is None else device), torch.tensor
            if device is not None and torch.device(device).type == "meta":
                out = func(*args, **{**kwargs, "device": torch.device("cpu")})
                return out if isinstance(out, FakeDeviceTensor) else FakeDeviceTensor(out)
        return func(*args, **kwargs)


@contextlib.contextmanager
def fake_device() -> Iterator[torch.device]:
    """Within: ``.to("meta")`` and ``device="meta"`` make ``FakeDeviceTensor``s, with values.

    Yields:
        The fake device.
    """
    with _FakeDataFactories(), _FakeDispatch():
        yield FAKE


@dataclass(frozen=True)
class Place:
    """Where a check runs: the device, the context that makes it usable, how close results are."""

    name: str
    device: torch.device
    context: Callable[[], contextlib.AbstractContextManager]
    exact: bool

    def run(self, fn: Callable[[torch.device], object]) -> object:
        """``fn(device)`` inside the context."""
        with self.context():
            return fn(self.device)

    def on_device(self, *tensors: torch.Tensor) -> None:
        """Assert that every tensor is on this place's device."""
        for t in tensors:
            assert t.device.type == self.device.type, f"a {tuple(t.shape)} tensor is on {t.device}"

    def same(self, actual: object, expected: object) -> None:
        """Assert equal results: exactly on the fake device, up to float rounding on a GPU."""
        if isinstance(expected, pd.DataFrame):
            pd.testing.assert_frame_equal(
                actual, expected, check_exact=self.exact, rtol=1e-3, atol=1e-4
            )
        elif isinstance(expected, dict):
            assert actual.keys() == expected.keys()
            for k in expected:
                self.same(actual[k], expected[k])
        elif isinstance(expected, torch.Tensor):
            assert actual.shape == expected.shape and actual.dtype == expected.dtype
            if self.exact:
                assert torch.equal(actual.cpu(), expected), (actual, expected)
            else:
                assert torch.allclose(actual.cpu(), expected, rtol=1e-3, atol=1e-4), actual
        elif isinstance(expected, float) and not self.exact:
            assert actual == pytest.approx(expected, rel=1e-3, abs=1e-4)
        else:
            assert actual == expected


FAKE_PLACE = Place("fake", FAKE, fake_device, exact=True)


# ---------------------------------------------------------------- small models and data


def _mlp(device: torch.device | str, batchnorm: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return MLP(16, hidden=(8, 6), n_classes=4, batchnorm=batchnorm).to(device)


def _lenet(device: torch.device | str) -> nn.Module:
    torch.manual_seed(0)
    model = LeNet5((1, 8, 8), n_classes=4, batchnorm=True, channels=(3, 4), fc=(6, 5))
    with torch.no_grad():  # non-trivial running statistics
        model.train()(torch.rand(8, 1, 8, 8))
    return model.eval().to(device)


def _data(n: int = 24, shape: tuple = (16,)) -> tuple[torch.Tensor, torch.Tensor, DataLoader]:
    """CPU inputs, labels and a loader over them (batches of 8), as the notebooks' loaders give."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, *shape, generator=g), torch.arange(n) % 4
    return x, y, DataLoader(TensorDataset(x, y), batch_size=8)


# ---------------------------------------------------------------- the checks


def check_batchnorm_layer(on: Place) -> None:
    """The from-scratch BatchNorm updates its running statistics and normalizes on its device."""

    def run(device):
        bn = N.BatchNorm(4).to(device)
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0)).to(device)
        y_train = bn(x)
        y_eval = bn.eval()(x)
        if torch.device(device).type != "cpu":
            on.on_device(y_train, y_eval, *bn.buffers())
        return {"train": y_train.detach(), "eval": y_eval.detach(), **bn.state_dict()}

    on.same(on.run(run), run("cpu"))


def check_activation_stats(on: Place) -> None:
    """ActivationStats records quantiles of activations on the device (notebook 08's crash)."""

    def run(device):
        model = _mlp(device).train()
        stats = N.ActivationStats(model, every=1)
        x, _, _ = _data()
        model(x.to(device))
        model.eval()(x.to(device))  # not recorded
        stats.remove()
        return stats.frame()

    frame = on.run(run)
    assert len(frame) == 2
    on.same(frame, run("cpu"))


def check_fold_batchnorm(on: Place) -> None:
    """Folding a batch norm into a layer without a bias makes the new bias on the layer's device."""

    def run(device):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3), nn.ReLU())
        with torch.no_grad():
            model[1].running_mean.normal_(), model[1].running_var.uniform_(0.5, 2)
        model = model.eval().to(device)
        folded = N.fold_batchnorm(model)
        if torch.device(device).type != "cpu":
            on.on_device(*folded.parameters())
        x = torch.rand(2, 2, 5, 5, generator=torch.Generator().manual_seed(0)).to(device)
        with torch.no_grad():
            return {"bias": folded[0].bias.detach(), "out": folded(x)}

    on.same(on.run(run), run("cpu"))


def check_bn_diagnostics(on: Place) -> None:
    """bn_activation_and_gradient and scale_invariance take CPU batches for a model elsewhere."""

    def run(device):
        model = _mlp(device)
        x, y, _ = _data()
        return {
            "grad": N.bn_activation_and_gradient(model, x, y),
            "scale": N.scale_invariance(model, x, y, index=1, scales=[1.0, 10.0]),
        }

    on.same(on.run(run), run("cpu"))


def check_train_mode_accuracy(on: Place) -> None:
    """train_mode_accuracy shuffles with a CPU generator and evaluates on the model's device."""

    def run(device):
        model = _mlp(device).eval()
        x, y, _ = _data()
        return {
            "shuffled": N.train_mode_accuracy(model, x, y, batch_size=8, seed=3),
            "sorted": N.train_mode_accuracy(model, x, y, batch_size=8, sort_by_label=True),
        }

    on.same(on.run(run), run("cpu"))


def check_lr_range_test(on: Place) -> None:
    """The LR range test trains on the model's device (or the given one) from a CPU loader."""

    def run(device, move_model: bool):
        model = _mlp(device if move_model else "cpu", batchnorm=False)
        _, _, loader = _data()
        test = S.lr_range_test(
            model, loader, lr_min=1e-3, lr_max=1.0, steps=5, device=None if move_model else device
        )
        assert module_device(model).type == (device.type if move_model else "cpu")  # not moved
        return test

    cpu = run(torch.device("cpu"), True)
    assert len(cpu) > 1
    on.same(on.run(lambda d: run(d, True)), cpu)
    on.same(on.run(lambda d: run(d, False)), cpu)


def check_distillation_losses(on: Place) -> None:
    """Both distillation losses and the soft targets compute on the device of the logits."""

    def run(device):
        g = torch.Generator().manual_seed(0)
        s, t = torch.randn(6, 4, generator=g).to(device), torch.randn(6, 4, generator=g).to(device)
        y = (torch.arange(6) % 4).to(device)
        out = {
            "hinton": KD.hinton_loss(s, t, y, 3.0, 0.7),
            "logits": KD.logit_loss(s, t, y, 0.5),
            "chosen": KD.distillation_loss(s, t, y, "hinton", 2.0, 1.0),
            "soft": KD.soft_targets(t, 4.0),
        }
        if torch.device(device).type != "cpu":
            on.on_device(*out.values())
        return out

    on.same(on.run(run), run("cpu"))


def check_teacher_logits(on: Place) -> None:
    """TeacherLogits runs a teacher on the device over CPU inputs; lookups follow the batch."""

    def run(device, cache_on_device: bool):
        teacher = _mlp(device).eval()
        x, _, _ = _data()
        cache = KD.TeacherLogits(teacher, x.to(device) if cache_on_device else x, batch_size=10)
        batch = torch.cat([x[:5], x[5:8] + 1.0]).to(device)  # 5 cached rows, 3 new ones
        out = cache(batch)
        if torch.device(device).type != "cpu":
            on.on_device(out)
        student, y = torch.zeros(8, 4, device=device), (torch.arange(8) % 4).to(device)
        losses = [
            KD.make_loss_fn(t, "logits", alpha=1.0)(student, y, batch)  # the teacher anywhere
            for t in (teacher, copy.deepcopy(teacher).cpu())
        ]
        return {
            "logits": out,
            "hits": cache.hits,
            "misses": cache.misses,
            "loss": losses[0],
            "loss cpu": losses[1],
        }

    cpu = run("cpu", False)
    assert (cpu["hits"], cpu["misses"]) == (5, 3)
    on.same(on.run(lambda d: run(d, False)), cpu)
    on.same(on.run(lambda d: run(d, True)), cpu)


def check_shifted_copies(on: Place) -> None:
    """Shifted copies draw their shifts on the CPU and build the images on the device of ``X``."""

    def run(device):
        x = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(0)).to(device)
        out = KD.shifted_copies(x, copies=2, max_shift=1, seed=4)
        if torch.device(device).type != "cpu":
            on.on_device(out)
        return out

    on.same(on.run(run), run("cpu"))


def check_weight_pruning(on: Place) -> None:
    """Magnitude pruning (global, layer, gradual, threshold) and sparse storage, on the device."""

    def run(device):
        model = _mlp(device, batchnorm=False)
        out = {"threshold": P.global_threshold(model, 0.3)}
        out["naive"] = P.sparsity(P.threshold_prune(copy.deepcopy(model), out["threshold"]))
        P.magnitude_prune(model, 0.4, "global")
        P.magnitude_prune(model, 0.6, "layer")
        pruner = P.GradualPruner(0.8, begin=1, end=2, every=1)
        pruner(model), pruner(model)
        out["layers"] = P.layer_sparsity(model)
        P.make_permanent(model)
        if torch.device(device).type != "cpu":
            on.on_device(*model.parameters())
        arrays = P.sparse_arrays(model.state_dict())
        out["arrays"] = {k: torch.from_numpy(v) for k, v in arrays.items()}
        return out

    on.same(on.run(run), run("cpu"))


def check_unit_scores(on: Place) -> None:
    """Every criterion scores the units on the model's device (the random one draws on the CPU)."""

    def run(device):
        model = _lenet(device)
        _, _, loader = _data(shape=(1, 8, 8))
        out = {c: NP.unit_scores(model, c, loader, max_batches=2, seed=5) for c in NP.CRITERIA}
        if torch.device(device).type != "cpu":
            on.on_device(*(s for scores in out.values() for s in scores.values()))
        return out

    on.same(on.run(run), run("cpu"))


def check_structured_pruning(on: Place) -> None:
    """Removing units (conv, flatten, linear, BatchNorm) keeps the smaller model on the device."""

    def run(device):
        model = _lenet(device)
        x, _, loader = _data(shape=(1, 8, 8))
        out = {}
        for scope in NP.SCOPES:
            small, keep = NP.prune(model, "apoz", 0.5, scope, loader=loader, max_batches=2)
            with torch.no_grad():
                out[f"{scope} logits"] = small(x.to(device))
            out[f"{scope} keep"] = keep
            if torch.device(device).type != "cpu":
                on.on_device(*small.parameters(), *small.buffers(), *keep.values())
        by_hand = NP.remove_units(model, {0: [0, 2], 4: [1, 2, 3]})  # plain lists of indices
        out["dead"] = NP.dead_units(by_hand)
        out["macs"] = measure.count_macs(by_hand, x)
        times = measure.layer_times(by_hand, x[:2], repeats=1)
        out["timed layers"] = list(times.index)
        return out

    on.same(on.run(run), run("cpu"))


def check_measure(on: Place) -> None:
    """accuracy and compare give a module its batches on its device, and a callable CPU tensors."""
    seen: list[str] = []

    def on_cpu(x: torch.Tensor) -> np.ndarray:  # stands for an ONNX Runtime session
        seen.append(x.device.type)
        return np.eye(4, dtype=np.float32)[(torch.arange(len(x)) % 4).numpy()]

    def run(device):
        model = _mlp(device).eval()
        _, _, loader = _data()
        table = measure.compare(
            {"module": model, "callable": on_cpu},
            loader,
            "module",
            batch_sizes=(1, 3),
            sizes={"callable": 100},
            repeats=1,
        )
        lat = measure.latency(
            {"module": model},
            next(iter(loader))[0].to(device),
            batch_sizes=(2,),
            warmup=0,
            repeats=1,
            rounds=1,
        )
        assert list(lat["batch_size"]) == [2]
        return {
            "accuracy": measure.accuracy(model, loader),
            "counts": measure.count_parameters(model),
            "bytes": measure.serialized_bytes(model),
            "table": table[["accuracy", "params", "nonzero", "bytes", "accuracy_delta_points"]],
        }

    on.same(on.run(run), run("cpu"))
    assert seen and set(seen) == {"cpu"}


def check_train(on: Place) -> None:
    """fit, predict and evaluate run where the model is, or move it to the given device."""

    def run(device, move_model: bool):
        model = _mlp(device if move_model else "cpu")
        _, _, loader = _data()
        hist = fit(
            model,
            loader,
            loader,
            epochs=1,
            optimizer="sgd",
            lr=0.1,
            progress=False,
            device=None if move_model else device,
        )
        if torch.device(device).type != "cpu":
            on.on_device(*model.parameters())
        logits, labels = predict(model, loader)
        assert logits.device.type == labels.device.type == "cpu"
        return {
            "history": hist.drop(columns="epoch_seconds"),
            "logits": logits,
            "eval": evaluate(model, loader),
            **model.state_dict(),
        }

    cpu = run(torch.device("cpu"), True)
    on.same(on.run(lambda d: run(d, True)), cpu)
    on.same(on.run(lambda d: run(d, False)), cpu)


CHECKS = [
    check_batchnorm_layer,
    check_activation_stats,
    check_fold_batchnorm,
    check_bn_diagnostics,
    check_train_mode_accuracy,
    check_lr_range_test,
    check_distillation_losses,
    check_teacher_logits,
    check_shifted_copies,
    check_weight_pruning,
    check_unit_scores,
    check_structured_pruning,
    check_measure,
    check_train,
]


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
def test_helper_keeps_the_device(check):
    check(FAKE_PLACE)


def test_fake_device_refuses_cpu_tensors():
    """The fake device catches what CUDA catches: the bugs these checks guard against."""
    with fake_device() as device:
        x = torch.randn(10).to(device)
        assert isinstance(x, FakeDeviceTensor) and x.device == FAKE
        with pytest.raises(RuntimeError, match="same device"):
            torch.quantile(x, torch.tensor([0.5]))  # ActivationStats' old q
        with pytest.raises(DeviceMismatch):
            x + torch.arange(10)
        with pytest.raises(DeviceMismatch):
            nn.Linear(10, 2).to(device)(torch.randn(3, 10))  # a CPU batch for a model on the device
        with pytest.raises(TypeError, match="numpy"):
            x.numpy()
        q = torch.quantile(x, torch.tensor([0.5], device=x.device))
        assert q.tolist() == torch.quantile(x.cpu(), torch.tensor([0.5])).tolist()
        assert (x + torch.tensor(1.0)).cpu().tolist() == (x.cpu() + 1).tolist()  # CPU scalar: fine
        assert torch.zeros(2, device=device).device == FAKE and torch.zeros(2).device.type == "cpu"


def test_module_device():
    assert module_device(nn.ReLU()) == torch.device("cpu")
    assert module_device(nn.Linear(2, 2)) == torch.device("cpu")
    bn = nn.BatchNorm1d(2, affine=False)
    with fake_device() as device:
        assert module_device(nn.Linear(2, 2).to(device)) == FAKE
        assert module_device(bn.to(device)) == FAKE  # buffers only
