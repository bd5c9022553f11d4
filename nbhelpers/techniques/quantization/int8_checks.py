"""int8 against fp32: the worst-case rounding error of an int8 Linear and the saturation check
built on it, ``reduce_range`` side by side, how close two models' logits are, and speed and size
ratios within one runtime."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from nbhelpers.techniques.quantization.onnx import OrtModel, export_onnx, ort_quantize


def int8_error_bound(
    layer: nn.Linear, x: torch.Tensor, reduce_range: bool, static: bool = False
) -> torch.Tensor:
    """Worst-case rounding error of ONNX Runtime's int8 version of one ``nn.Linear``, per output.

    Weights: symmetric, :math:`s_w = \\max|W| / q_w` with q_w = 127 (64 with ``reduce_range``;
    per-channel scales are never larger). Inputs: uint8 over their range, :math:`s_x = (\\max(x, 0)
    - \\min(x, 0)) / q_x`, q_x = 255 (127 for static ``reduce_range``). Then :math:`|\\hat w - w|
    \\le s_w/2` and :math:`|\\hat x - x| \\le s_x` (half a step, plus half for the rounded zero
    point):

    .. math:: |\\hat y_j - y_j| \\le \\sum_i s_x (|w_{ji}| + s_w/2) + |x_i|\\, s_w/2
              \\; [+\\, s_y + s_x s_w / 2 \\text{ static}]

    where static quantization also rounds the output to its calibrated step :math:`s_y` and the
    bias to int32. The int32 accumulation is exact, so a larger error can only come from a
    saturated kernel. The bound holds for inputs inside the calibration range (calibrate on ``x``).

    Args:
        layer: the float layer.
        x: the input batch (n, in) the int8 model was run (and, if static, calibrated) on.
        reduce_range: whether the model was quantized with 7-bit weights.
        static: static quantization (output requantized) rather than dynamic.

    Returns:
        The bound, shape (n, out).
    """
    w, x = layer.weight.detach().float(), x.detach().float().reshape(len(x), -1)
    q_x = 127 if static and reduce_range else 255
    s_w = w.abs().max() / (64 if reduce_range else 127)
    s_x = (torch.clamp(x.max(), min=0) - torch.clamp(x.min(), max=0)) / q_x
    bound = (s_x * (w.abs() + s_w / 2)).sum(1) + x.abs().sum(1, keepdim=True) * s_w / 2
    if static:
        with torch.no_grad():
            y = layer(x)
        s_y = (torch.clamp(y.max(), min=0) - torch.clamp(y.min(), max=0)) / q_x
        bound = bound + s_y + s_x * s_w / 2
    return bound


def saturation_check(
    layer: nn.Linear, x: torch.Tensor, folder: str | Path, reduce_range: bool
) -> dict[str, float]:
    """Quantize one Linear with ONNX Runtime (dynamic) and compare its error with the rounding
    bound.

    Outputs beyond ``int8_error_bound`` cannot come from rounding: they show a saturating kernel.

    Args:
        layer: the float layer (e.g. the first Linear of the MLP).
        x: its input batch (n, in_features).
        folder: where the .onnx files are written.
        reduce_range: 7-bit weights or full 8 bits.

    Returns:
        {"reduce_range", "max_error", "max_error_over_bound", "outputs_beyond_bound", "outputs"}.
    """
    layer = copy.deepcopy(layer).cpu().eval()
    x = x.detach().cpu().reshape(len(x), -1)
    tag = "7bit" if reduce_range else "8bit"
    fp32 = export_onnx(layer, Path(folder) / f"layer_{tag}_fp32.onnx", x)
    out = torch.as_tensor(
        OrtModel(
            ort_quantize(fp32, Path(folder) / f"layer_{tag}_int8.onnx", reduce_range=reduce_range)
        )(x)
    )
    with torch.no_grad():
        err = (out - layer(x)).abs()
    bound = int8_error_bound(layer, x, reduce_range)
    return {
        "reduce_range": reduce_range,
        "max_error": float(err.max()),
        "max_error_over_bound": float((err / bound).max()),
        "outputs_beyond_bound": int((err > bound).sum()),
        "outputs": err.numel(),
    }


def reduce_range_study(
    fp32_paths: dict[str, Path],
    calib: DataLoader,
    batches: int,
    x: torch.Tensor,
    y: torch.Tensor,
    reference: dict[str, torch.Tensor],
    fmt: str = "QDQ",
) -> pd.DataFrame:
    """ONNX Runtime int8 with and without ``reduce_range``, side by side, on this machine's CPU.

    Args:
        fp32_paths: model name (e.g. "mlp") -> its fp32 .onnx file.
        calib: calibration batches (training data) for static quantization.
        batches: calibration batches.
        x: the test inputs.
        y: the test labels.
        reference: model name -> its fp32 torch logits on ``x``.
        fmt: static format.

    Returns:
        One row per (model, quantization, reduce_range): relative_max_diff and top1_agreement
        against fp32, and test accuracy.
    """
    rows = []
    for name, src in fp32_paths.items():
        for kind in ("dynamic", "static"):
            for rr in (False, True):
                dst = src.with_name(f"{src.stem}_{kind}_rr{int(rr)}.onnx")
                path = ort_quantize(
                    src, dst, calib if kind == "static" else None, batches, fmt, reduce_range=rr
                )
                logits = OrtModel(path)(x)
                agree = output_agreement(reference[name], logits)
                rows.append(
                    {
                        "model": name,
                        "quantization": kind,
                        "reduce_range": rr,
                        "relative_max_diff": agree["relative_max_diff"],
                        "top1_agreement": agree["top1_agreement"],
                        "accuracy": float((torch.as_tensor(logits).argmax(1) == y).float().mean()),
                    }
                )
    return pd.DataFrame(rows).set_index(["model", "quantization", "reduce_range"])


def output_agreement(
    reference: torch.Tensor | np.ndarray, other: torch.Tensor | np.ndarray
) -> dict[str, float]:
    """How close two models' logits are: max and mean absolute difference, top-1 agreement.

    Args:
        reference: logits of the reference model (n, classes).
        other: logits of the other model.

    Returns:
        {"max_abs_diff", "mean_abs_diff", "relative_max_diff" (max diff / reference logit range),
        "top1_agreement"}.
    """
    a = torch.as_tensor(np.asarray(reference), dtype=torch.float32)
    b = torch.as_tensor(np.asarray(other), dtype=torch.float32)
    d = (a - b).abs()
    return {
        "max_abs_diff": float(d.max()),
        "mean_abs_diff": float(d.mean()),
        "relative_max_diff": float(d.max() / (a.max() - a.min())),
        "top1_agreement": float((a.argmax(1) == b.argmax(1)).float().mean()),
    }


def same_runtime_speedups(
    table: pd.DataFrame, pairs: Sequence[tuple[str, str]], batch_sizes: Sequence[int]
) -> pd.DataFrame:
    """Speedup of int8 over fp32 within one runtime, from a ``measure.compare`` table.

    Args:
        table: the comparison table (index: model names).
        pairs: (fp32 row, int8 row) pairs measured in the same runtime.
        batch_sizes: batch sizes whose latency columns to use.

    Returns:
        One row per int8 model: its fp32 reference, speedup_b<bs> = fp32 latency / int8 latency,
        size_ratio = fp32 bytes / int8 bytes, accuracy_delta_points.
    """
    rows = []
    for ref, q in pairs:
        r, m = table.loc[ref], table.loc[q]
        row = {
            "model": q,
            "fp32 reference": ref,
            "size_ratio": r["bytes"] / m["bytes"],
            "accuracy_delta_points": (m["accuracy"] - r["accuracy"]) * 100,
        }
        for bs in batch_sizes:
            row[f"speedup_b{bs}"] = r[f"latency_ms_b{bs}"] / m[f"latency_ms_b{bs}"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")
