"""PyTorch int8: the eager ``torch.ao.quantization`` path for the shared Sequential models, and
its FX graph mode for any traceable model.

The eager path (deprecated in torch 2.13 but the int8 path with CPU kernels here) wraps a
Sequential between stubs, fuses (Conv2d or Linear, ReLU) neighbours, observes (``prepare_static``,
``calibrate``) or fake-quantizes for QAT, and ``convert`` swaps in the int8 kernels;
``dynamic_int8`` quantizes Linear weights with activations on the fly. ``static_int8_fx`` does
static int8 of any traceable model, residual sums included (the newer PT2E flow is not part of this
torch build), and ``load_static_int8`` rebuilds a saved one.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from nbhelpers.core.params import ParameterError, check_choice
from nbhelpers.techniques.quantization.affine import WEIGHT_LAYERS

#: Message patterns of the warnings ``torch.ao.quantization`` emits in torch 2.13 on every call.
AO_WARNINGS = (
    r"torch\.ao\.quantization is deprecated",
    r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
    r".*quantized tensor creation functions",
    r"Please use quant_min and quant_max",
    r"must run observer before calling calculate_qparams",
    r".*reduce_range will be deprecated",
)


def engines() -> list[str]:
    """The quantized engines this torch build supports (e.g. x86, fbgemm, qnnpack, onednn)."""
    return [e for e in torch.backends.quantized.supported_engines if e != "none"]


@contextmanager
def quiet_ao() -> Iterator[None]:
    """Silence exactly the deprecation and observer warnings ``torch.ao.quantization`` emits."""
    with warnings.catch_warnings():
        for pattern in AO_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        yield


def set_engine(engine: str) -> str:
    """Select the quantized kernel library (x86, fbgemm, qnnpack, onednn) for the int8 ops.

    Args:
        engine: the engine name.

    Returns:
        The engine now in use.
    """
    check_choice("ENGINE", engine, engines())
    torch.backends.quantized.engine = engine
    return torch.backends.quantized.engine


class QuantReady(nn.Module):
    """A float model between a QuantStub and a DeQuantStub, ready for eager static quantization."""

    def __init__(self, body: nn.Module):
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant, self.body, self.dequant = QuantStub(), copy.deepcopy(body), DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize the input, run the (converted) body on int8, dequantize the logits."""
        return self.dequant(self.body(self.quant(x)))


def fusion_groups(seq: nn.Sequential) -> list[list[str]]:
    """Names of (Conv2d or Linear, ReLU) neighbours in a Sequential, to fuse into one int8 op.

    Args:
        seq: the sequential model.

    Returns:
        e.g. [["0", "1"], ["3", "4"]].
    """
    names = list(seq._modules)
    return [
        [a, b]
        for a, b in zip(names, names[1:])
        if isinstance(seq._modules[a], WEIGHT_LAYERS) and isinstance(seq._modules[b], nn.ReLU)
    ]


def prepare_static(model: nn.Sequential, engine: str = "x86", qat: bool = False) -> QuantReady:
    """Wrap, fuse, attach the engine's default qconfig and insert observers (or fake-quant for QAT).

    Args:
        model: the float ``nn.Sequential`` (copied, not changed).
        engine: quantized engine whose default qconfig (observers, per-channel or not) is used.
        qat: prepare for quantization-aware training (train mode, fake-quant modules) instead.

    Returns:
        The prepared ``QuantReady`` model: calibrate (or train) it, then ``convert``.
    """
    import torch.ao.quantization as tq

    set_engine(engine)
    m = QuantReady(model).cpu()  # eager int8 kernels exist on the CPU only
    m.train(qat)
    with quiet_ao():
        fuse = tq.fuse_modules_qat if qat else tq.fuse_modules
        fuse(m.body, fusion_groups(m.body), inplace=True)
        m.qconfig = tq.get_default_qat_qconfig(engine) if qat else tq.get_default_qconfig(engine)
        (tq.prepare_qat if qat else tq.prepare)(m, inplace=True)
    return m


@torch.no_grad()
def calibrate(model: nn.Module, loader: DataLoader, batches: int) -> int:
    """Run a few batches through a prepared model so its observers record activation ranges.

    The batches go to the device of the model's parameters (the CPU for eager int8).

    Args:
        model: the prepared model.
        loader: yields (x, y) batches (training data, never the test set).
        batches: how many batches.

    Returns:
        The number of samples seen.
    """
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    seen = 0
    with quiet_ao():
        for i, (x, _) in enumerate(loader):
            if i >= batches:
                break
            model(x.to(device))
            seen += len(x)
    return seen


def convert(model: nn.Module) -> nn.Module:
    """A copy of a prepared model with observed/fake-quant modules replaced by int8 kernels."""
    import torch.ao.quantization as tq

    with quiet_ao():
        return tq.convert(model.eval(), inplace=False)


def dynamic_int8(model: nn.Module, engine: str = "x86") -> nn.Module:
    """Dynamic post-training quantization: int8 Linear weights, activations quantized on the fly.

    Eager int8 runs on the CPU only: the copy is moved there whatever the model's device.

    Args:
        model: the float model (copied).
        engine: quantized engine.

    Returns:
        The quantized copy.
    """
    import torch.ao.quantization as tq

    set_engine(engine)
    with quiet_ao():
        return tq.quantize_dynamic(
            copy.deepcopy(model).cpu().eval(), {nn.Linear}, dtype=torch.qint8
        )


def observer_ranges(prepared: nn.Module) -> pd.DataFrame:
    """What each activation observer of a prepared model saw, and the int8 range it will use.

    Args:
        prepared: a model from ``prepare_static``, calibrated or not.

    Returns:
        One row per activation observer ("quant" is the input, "body.<i>" the output of layer
        i): observed_min and observed_max (NaN when it saw no data), scale and zero_point that
        ``convert`` will use, and range_low and range_high, the floats the integer grid covers.
    """
    rows = []
    with quiet_ao():
        for name, m in prepared.named_modules():
            if not name.endswith("activation_post_process") or not hasattr(m, "min_val"):
                continue
            lo, hi = float(m.min_val), float(m.max_val)
            scale, zero = (float(t) for t in m.calculate_qparams())
            rows.append(
                {
                    "layer": name.removesuffix(".activation_post_process"),
                    "observed_min": lo if math.isfinite(lo) else math.nan,
                    "observed_max": hi if math.isfinite(hi) else math.nan,
                    "scale": scale,
                    "zero_point": int(zero),
                    "range_low": scale * (m.quant_min - zero),
                    "range_high": scale * (m.quant_max - zero),
                }
            )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- any nn.Module: FX graph mode


def check_layer_names(name: str, layers: object, model: nn.Module) -> list[str]:
    """Check a list of a model's Linear/Conv2d layer names (e.g. the layers kept in float).

    Args:
        name: parameter name, e.g. "MIXED_FLOAT".
        layers: the given list.
        model: a model of the architecture.

    Returns:
        The names.
    """
    known = [n for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]
    if not isinstance(layers, list) or any(x not in known for x in layers):
        raise ParameterError(
            name, layers, "a list of weighted layers of the model: " + ", ".join(known)
        )
    return list(layers)


def static_int8_fx(
    model: nn.Module,
    example: torch.Tensor,
    loader: DataLoader | None = None,
    batches: int = 10,
    engine: str = "x86",
    keep_float: Sequence[str] = (),
) -> nn.Module:
    """Static int8 of any traceable model with ``torch.ao``'s FX graph mode.

    ``prepare_fx`` traces the model, fuses Conv-BN-ReLU and Linear-ReLU patterns it finds in the
    graph (whatever the layers are called), inserts observers, and quantizes a residual ``x + y``
    as one int8 ``add`` (``add_relu`` when a ReLU follows); ``convert_fx`` swaps in the int8
    kernels. Without a ``loader`` the model is only prepared and converted, to rebuild the
    structure into which ``load_state_dict`` puts a saved int8 state (``load_static_int8``).

    Args:
        model: the float model (copied; run on the CPU, where the int8 kernels are).
        example: an input batch, for tracing.
        loader: yields (x, y) training batches for calibration (never the test set), or None.
        batches: how many calibration batches.
        engine: quantized engine whose default qconfig mapping is used.
        keep_float: names of Linear/Conv2d layers left in float (``check_layer_names``).

    Returns:
        The int8 ``GraphModule`` on the CPU.

    Raises:
        ParameterError: a name in ``keep_float`` that is not a weighted layer of the model.
        ValueError: ``torch.fx`` cannot trace the model (the tracer's reason).
    """
    import torch.ao.quantization as tq
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    check_layer_names("KEEP_FLOAT", list(keep_float), model)
    set_engine(engine)
    mapping = tq.get_default_qconfig_mapping(engine)
    for name in keep_float:
        mapping.set_module_name(name, None)
    with quiet_ao():
        try:
            prepared = prepare_fx(copy.deepcopy(model).cpu().eval(), mapping, (example[:1].cpu(),))
        except Exception as err:  # torch.fx's TraceError and the errors of the traced code
            raise ValueError(f"torch.fx cannot trace {type(model).__name__}: {err}") from err
        if loader is not None:
            calibrate(prepared, loader, batches)
        return convert_fx(prepared)


def load_static_int8(
    model: nn.Module,
    example: torch.Tensor,
    state: Mapping[str, object] | str | Path,
    engine: str = "x86",
) -> nn.Module:
    """Rebuild a saved ``static_int8_fx`` model: the same architecture, the saved int8 state.

    Args:
        model: a float model of the architecture (its weights do not matter).
        example: an input batch, for tracing.
        state: the ``state_dict()`` of the int8 model (int8 weights, scales and zero points,
            keyed by the model's own layer names), or the file ``torch.save`` wrote it to (read
            with ``weights_only=True``).
        engine: the engine the model was quantized with.

    Returns:
        The int8 model, equal to the saved one.
    """
    if isinstance(state, str | Path):
        with warnings.catch_warnings():  # torch 2.13 warns on reading quantized storages
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
            state = torch.load(state, weights_only=True)
    qmodel = static_int8_fx(model, example, None, 0, engine)
    with quiet_ao():
        qmodel.load_state_dict(state)  # keeps its _metadata: the int8 modules read a version
    return qmodel
