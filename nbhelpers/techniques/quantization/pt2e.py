"""PyTorch 2 export int8, the path PyTorch recommends for CPU int8 now: ``torch.export``, the x86
Inductor quantizer (oneDNN kernels), ``torch.compile``; and ``torch.compile`` of the float model as
its own baseline, so the compile's share and int8's share of a speed-up are told apart."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from nbhelpers.core.params import ParameterError

#: Loggers that warn when torchao is imported on a CPU machine: its CUDA-only libraries, and torch's
#: pytree about an Enum torchao registers.
_NOISY = ("torchao", "torch.utils._pytree")


def _quiet_torchao() -> None:
    """Silence the warnings that importing torchao on a CPU machine logs (nothing is wrong)."""
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.ERROR)


def pt2e_int8(
    model: nn.Module, example: torch.Tensor, loader: DataLoader, batches: int
) -> nn.Module:
    """Static int8 through PyTorch 2 export: export, X86InductorQuantizer, calibrate, convert.

    The graph is exported with a dynamic batch axis, so calibration batches and timed batches may
    differ in size. Without ``torch.compile`` the converted model runs the quantize/dequantize
    arithmetic as reference float operators (as exact as int8, not fast); compiled, Inductor fuses
    them into int8 oneDNN kernels.

    Args:
        model: the float model (copied to the CPU, not changed).
        example: an input batch.
        loader: yields (x, y) calibration batches (training data).
        batches: calibration batches.

    Returns:
        The converted model (a ``torch.fx.GraphModule``) in evaluation mode, on the CPU, holding
        only the tensors its graph reads (int8 weights, scales and zero points, float biases; no
        float copy of a weight); its ``.eval()`` is allowed (exported models refuse it otherwise)
        and changes nothing.
    """
    import copy

    from torch.export import Dim

    _quiet_torchao()
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e import (
        allow_exported_model_train_eval,
        move_exported_model_to_eval,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if batches < 1:
        raise ParameterError("CALIBRATION_BATCHES", batches, "an integer >= 1")
    float_model = copy.deepcopy(model).cpu().eval()
    batch = Dim("batch", min=1, max=1 << 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(
            float_model, (example.cpu(),), dynamic_shapes=({0: batch},)
        ).module()
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for (x, _), _ in zip(loader, range(batches)):
                prepared(x.cpu())
        converted = convert_pt2e(prepared)
    _drop_unused_tensors(converted)
    move_exported_model_to_eval(converted)
    allow_exported_model_train_eval(converted)  # so that .eval() (measure.correct) is allowed
    return converted


def _drop_unused_tensors(gm: torch.fx.GraphModule) -> None:
    """Delete the parameters and buffers the graph no longer reads: ``convert_pt2e`` folds each
    weight into an int8 constant but leaves the float original attached, which the saved
    ``state_dict`` would otherwise carry beside its int8 copy."""
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    names = [n for n, _ in gm.named_parameters()] + [n for n, _ in gm.named_buffers()]
    for name in names:
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            delattr(gm.get_submodule(owner) if owner else gm, leaf)


def compiled(model: nn.Module, example: torch.Tensor) -> tuple[Callable, float]:
    """``torch.compile`` a model and run it once on each of two batch sizes (the compile happens
    then).

    Args:
        model: the model (float, or int8 from ``pt2e_int8``).
        example: an input batch; it and its first row are run, so both shapes are compiled.

    Returns:
        (the compiled callable, seconds of those first calls: the compile's cost).
    """
    fn = torch.compile(model, dynamic=True)
    start = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn(example)
        fn(example[:1])
    return fn, time.perf_counter() - start
