"""ONNX Runtime dynamic int8 of a language model's ``MatMul`` weights, its per-character losses,
its agreement with torch in fp32 and the bytes of its weights.

A model exported with ``onnx.export_onnx`` runs its ``Linear`` layers as ``MatMul`` nodes with
constant weights (the attention's q k^T and softmax-times-v are ``MatMul`` nodes of two
activations). ``ort_dynamic_int8`` quantizes only those constant weights, to int8 with one scale
per tensor, the inputs quantized to uint8 per batch at run time (``DynamicQuantizeLinear`` then
``MatMulInteger``): the scheme of ``torch.ao``'s ``quantize_dynamic`` on ``nn.Linear``. ONNX
Runtime's dynamic quantization would otherwise also quantize ``Gather``, the embedding tables,
which torch.ao keeps in float; ``op_types`` keeps the two comparable.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from nbhelpers.core.machine import cpu_flags, int8_precaution
from nbhelpers.core.params import ParameterError, check_bool, check_int
from nbhelpers.techniques.quantization.onnx import OrtModel
from nbhelpers.techniques.quantization.onnx_size import onnx_size_breakdown

#: How many times torch's own float32 rounding (its largest logit difference from a float64 run)
#: the fp32 ONNX Runtime logits may differ from torch's: each of the two float32 results is off the
#: exact one by its rounding, so their difference is at most the sum of both (2x if ONNX Runtime
#: rounds as much as torch), doubled for kernels that sum in other orders and fuse operators.
AGREEMENT_FACTOR = 4.0


def ort_dynamic_int8(
    src: str | Path,
    dst: str | Path,
    reduce_range: bool | None = None,
    op_types: Sequence[str] = ("MatMul",),
    symbolic_shapes: bool = False,
) -> Path:
    """Dynamic int8 of an ONNX model's constant ``MatMul`` weights (per tensor, signed int8).

    Args:
        src: the float .onnx file (``export_onnx``).
        dst: the int8 .onnx file to write.
        reduce_range: 7-bit weights; None: ``machine.int8_precaution`` of this CPU decides (ONNX
            Runtime recommends them on x86-64 CPUs without VNNI, whose u8s8 kernels saturate).
        op_types: the operator types quantized (``op_types_to_quantize``).
        symbolic_shapes: also run ``quant_pre_process``'s symbolic shape inference, for shapes
            ONNX's own inference cannot resolve. An exported ``CharTransformer`` does not need it
            (the same int8 logits without it) and it takes seconds; ONNX's shape inference and
            ONNX Runtime's graph optimization always run first.

    Returns:
        The path of the int8 model.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if reduce_range is None:
        reduce_range = bool(int8_precaution(cpu_flags())["reduce_range"])
    check_bool("reduce_range", reduce_range)
    check_bool("symbolic_shapes", symbolic_shapes)
    if isinstance(op_types, str) or not op_types:
        raise ParameterError("op_types", op_types, "a non-empty list of ONNX operator types")
    src, dst = Path(src), Path(dst)
    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=not symbolic_shapes)
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # ORT logs advice through the root logger
    try:
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8,
                         op_types_to_quantize=list(op_types), reduce_range=reduce_range,
                         extra_options={"MatMulConstBOnly": True})  # fmt: skip
    finally:
        logging.getLogger().setLevel(level)
        pre.unlink(missing_ok=True)
    return dst


def _logits(session: OrtModel | nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(session, nn.Module):
        with torch.no_grad():
            return session(x).float().cpu()
    return torch.from_numpy(np.asarray(session(x))).float()


def session_char_losses(
    session: OrtModel, x: torch.Tensor, y: torch.Tensor, batch_size: int = 32
) -> np.ndarray:
    """Each target character's loss in bits under an ONNX Runtime language model (as
    ``measure.bpc.char_losses`` gives it for a torch model).

    Args:
        session: the model's ``OrtModel`` (logits of shape (batch, tokens, vocab)).
        x: (windows, context) int64 inputs.
        y: (windows, context) int64 targets.
        batch_size: windows per run, at least 1.

    Returns:
        A 1-D float64 array of ``x.numel()`` losses, window by window.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.numel() == 0:
        raise ParameterError("x", type(x).__name__, "a non-empty (windows, context) index tensor")
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        raise ParameterError("y", type(y).__name__, f"an index tensor of shape {tuple(x.shape)}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    out = []
    for i in range(0, len(x), batch_size):
        logits = _logits(session, x[i : i + batch_size])
        nats = F.cross_entropy(
            logits.flatten(0, 1), y[i : i + batch_size].flatten(), reduction="none"
        )
        out.append(nats.double())
    return (torch.cat(out) / math.log(2)).numpy()


def fp32_agreement(model: nn.Module, session: OrtModel, x: torch.Tensor) -> dict[str, float]:
    """How far an fp32 ONNX Runtime model's logits are from torch's, against a tolerance derived
    from torch's own float32 rounding on the same inputs.

    The tolerance is ``AGREEMENT_FACTOR`` times the largest difference between the torch model's
    float32 logits and those of a float64 copy (float32 rounding, measured on these inputs), at
    least one float32 ulp of the largest logit.

    Args:
        model: the float torch model that was exported.
        session: its fp32 ``OrtModel``.
        x: a batch of inputs.

    Returns:
        {"max_abs_diff", "torch_fp32_rounding", "tolerance", "max_abs_logit", "within"}.
    """
    ref = copy.deepcopy(model).cpu().eval()
    t32 = _logits(ref, x)
    t64 = _logits(ref.double(), x).double()
    ort = _logits(session, x)
    rounding = float((t32.double() - t64).abs().max())
    top = float(t32.abs().max())
    tol = AGREEMENT_FACTOR * max(rounding, torch.finfo(torch.float32).eps * top)
    diff = float((ort - t32).abs().max())
    return {"max_abs_diff": diff, "torch_fp32_rounding": rounding, "tolerance": tol,
            "max_abs_logit": top, "within": diff <= tol}  # fmt: skip


def weight_bytes(paths: Mapping[str, str | Path], reference: str | None = None) -> pd.DataFrame:
    """The bytes of ONNX files and of their weights (``onnx_size_breakdown``), and how many times
    smaller each is than a reference file.

    Args:
        paths: name -> .onnx file.
        reference: the name the ratios divide (None: the first).

    Returns:
        One row per file (index: model): ``file_bytes``; ``weight_bytes`` (the tensors in weight
        slots, e.g. MatMul weights, plus the scales and zero points that quantize them; an
        embedding table read by ``Gather`` is not a weight here); ``weights``; ``file_ratio`` and
        ``weight_ratio`` (reference / this).
    """
    if not paths:
        raise ParameterError("paths", paths, "at least one .onnx file")
    reference = next(iter(paths)) if reference is None else reference
    if reference not in paths:
        raise ParameterError("reference", reference, "one of " + ", ".join(map(repr, paths)))
    rows = []
    for name, path in paths.items():
        breakdown = onnx_size_breakdown(path)
        parts = breakdown.set_index("part")
        rows.append({"model": name, "file_bytes": int(breakdown.attrs["file_bytes"]),
                     "weight_bytes": int(parts.loc["weights", "bytes"]
                                         + parts.loc["scales and zero points", "bytes"]),
                     "weights": int(parts.loc["weights", "tensors"])})  # fmt: skip
    table = pd.DataFrame(rows).set_index("model")
    table["file_ratio"] = table.loc[reference, "file_bytes"] / table.file_bytes
    table["weight_ratio"] = table.loc[reference, "weight_bytes"] / table.weight_bytes
    return table
