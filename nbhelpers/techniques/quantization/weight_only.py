"""Weight-only quantization of a model's ``Linear`` layers: int8 per channel or per tensor, and
int4 (any width from 2 to 8 bits) per group of input columns, with the bytes it would store.

Each weight row is cut into groups of ``group_size`` consecutive input columns (per channel: the
whole row; per tensor: the whole matrix is one group). Each group gets an asymmetric range, widened
to contain 0, a scale ``s = (max(w_max, 0) - min(w_min, 0)) / (2^b - 1)`` **stored as float16**
(and used as float16: the dequantized weights are those a float16 scale gives) and an integer zero
point ``z = round(-min(w_min, 0) / s)`` in ``[0, 2^b - 1]``; the codes are
``q = clamp(round(w / s) + z, 0, 2^b - 1)`` and the weight the model computes with is
``s (q - z)``. This is the layout of GPTQ / AWQ-style int4 weight-only checkpoints (uint4 codes,
a scale and a zero point per group).

``weight_only_model`` replaces each chosen ``Linear``'s weight by its dequantized version in a
copy of the model: **fake quantization**. It measures what the format does to the model's output
(quality) and what it would store (bytes: ``b`` bits per weight packed, plus a float16 scale and a
``b``-bit zero point per group), not the speed of int4 kernels: the copy still multiplies float32
matrices.

A ``Linear`` whose weight is the same tensor as an ``nn.Embedding``'s (a head tied to the token
embedding) is left out by default (``quantizable_linears``): changing it would change the
embedding too.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn

from nbhelpers.core.params import ParameterError, check_int

#: Bytes of one stored scale (float16).
SCALE_BYTES = 2
#: Bits a weight-only format may use.
MIN_BITS, MAX_BITS = 2, 8


def quantizable_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The ``Linear`` layers whose weight is their own: not shared with an ``nn.Embedding``.

    Args:
        model: any model.

    Returns:
        (name, layer) pairs in ``named_modules`` order (for a ``CharTransformer``: every block's
        qkv, attn.proj, mlp.fc and mlp.proj, not the tied head).
    """
    shared = {m.weight.data_ptr() for m in model.modules() if isinstance(m, nn.Embedding)}
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and m.weight.data_ptr() not in shared
    ]


def check_group_size(name: str, group_size: object, in_features: Sequence[int]) -> int | None:
    """Check a group size against the input widths of the layers it will cut.

    Args:
        name: the parameter named in errors (e.g. "GROUP_SIZES").
        group_size: None (per channel), or an integer >= 2 that divides every width.
        in_features: the layers' input widths.

    Returns:
        The group size (None stays None).
    """
    if group_size is None:
        return None
    widths = sorted(set(int(w) for w in in_features))
    g = check_int(name, group_size, minimum=2)
    if any(w % g for w in widths):
        raise ParameterError(
            name, group_size, f"a group size >= 2 that divides every layer's input width {widths}"
        )
    return g


def quantize_weight_groups(
    w: torch.Tensor, bits: int, group_size: int | None = None, per_tensor: bool = False
) -> tuple[torch.Tensor, dict]:
    """Quantize a weight matrix to ``bits`` per weight with one float16 scale and zero point per
    group, and dequantize it (see the module docstring).

    Args:
        w: a (out_features, in_features) float weight.
        bits: bits per weight, from 2 to 8.
        group_size: input columns per group, dividing ``in_features``; None: one group per row
            (per channel).
        per_tensor: one group for the whole matrix (``group_size`` must then be None).

    Returns:
        (the dequantized weight, same shape and dtype as ``w``; its bytes: a dict with
        ``weights``, ``groups``, ``code_bytes`` (bits packed), ``scale_bytes`` (float16),
        ``zero_bytes`` (``bits`` bits each, packed), ``bytes`` (their sum) and ``fp32_bytes``).
    """
    if not isinstance(w, torch.Tensor) or w.ndim != 2 or not w.is_floating_point():
        raise ParameterError("w", type(w).__name__, "a 2-D float weight (out, in)")
    bits = check_int("bits", bits, minimum=MIN_BITS, maximum=MAX_BITS)
    if per_tensor and group_size is not None:
        raise ParameterError("group_size", group_size, "None when per_tensor is True")
    g = check_group_size("group_size", group_size, [w.shape[1]]) or w.shape[1]
    rows = w.detach().float().reshape(1, -1) if per_tensor else w.detach().float().reshape(-1, g)
    qmax = 2**bits - 1
    lo = rows.amin(dim=1, keepdim=True).clamp(max=0.0)
    hi = rows.amax(dim=1, keepdim=True).clamp(min=0.0)
    scale = ((hi - lo) / qmax).half().float()  # stored as float16, used as stored
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group is exact
    zero = torch.clamp(torch.round(-lo / scale), 0, qmax)
    q = torch.clamp(torch.round(rows / scale) + zero, 0, qmax)
    w_hat = (scale * (q - zero)).reshape(w.shape).to(w.dtype)
    groups = rows.shape[0]
    info = {
        "weights": w.numel(),
        "groups": groups,
        "code_bytes": math.ceil(w.numel() * bits / 8),
        "scale_bytes": groups * SCALE_BYTES,
        "zero_bytes": math.ceil(groups * bits / 8),
        "fp32_bytes": w.numel() * 4,
    }
    info["bytes"] = info["code_bytes"] + info["scale_bytes"] + info["zero_bytes"]
    return w_hat, info


def format_name(bits: int, group_size: int | None = None, per_tensor: bool = False) -> str:
    """A weight-only format in words, e.g. "int4 g64", "int8 per-channel", "int8 per-tensor"."""
    scope = (
        "per-tensor" if per_tensor else "per-channel" if group_size is None else f"g{group_size}"
    )
    return f"int{bits} {scope}"


def weight_only_model(
    model: nn.Module,
    bits: int,
    group_size: int | None = None,
    per_tensor: bool = False,
    layers: Sequence[str] | None = None,
) -> tuple[nn.Module, pd.DataFrame]:
    """A copy of a model whose ``Linear`` weights are quantized and dequantized (fake quant).

    Every argument is checked against every layer before anything is quantized.

    Args:
        model: the float model (not changed).
        bits: bits per weight, from 2 to 8.
        group_size: input columns per group (dividing every chosen layer's input width); None:
            per channel.
        per_tensor: one scale and zero point per matrix.
        layers: names of the ``Linear`` layers to quantize (default: ``quantizable_linears``).

    Returns:
        (the copy, one row per quantized layer: ``layer``, ``shape``, ``weights``, ``groups``,
        ``fp32_bytes``, ``bytes``, ``ratio``, ``rel_error`` (||W - W_hat|| / ||W||), plus a
        "total" row).
    """
    bits = check_int("bits", bits, minimum=MIN_BITS, maximum=MAX_BITS)
    chosen = quantizable_linears(model)
    if layers is not None:
        known = dict(chosen)
        if not layers or any(n not in known for n in layers):
            raise ParameterError("layers", list(layers), "names of: " + ", ".join(known))
        chosen = [(n, known[n]) for n in layers]
    if per_tensor and group_size is not None:
        raise ParameterError("group_size", group_size, "None when per_tensor is True")
    check_group_size("group_size", group_size, [m.in_features for _, m in chosen])
    out = copy.deepcopy(model)
    rows = []
    for name, _ in chosen:
        lin = out.get_submodule(name)
        w = lin.weight.detach()
        w_hat, info = quantize_weight_groups(w, bits, group_size, per_tensor)
        with torch.no_grad():
            lin.weight.copy_(w_hat)
        err = float((w - w_hat).float().norm() / w.float().norm().clamp_min(1e-30))
        rows.append({"layer": name, "shape": "x".join(map(str, w.shape)), **info, "rel_error": err})
    return out, _bytes_table(rows)


def _bytes_table(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    total = {k: df[k].sum() for k in ("weights", "groups", "code_bytes", "scale_bytes",
                                      "zero_bytes", "fp32_bytes", "bytes")}  # fmt: skip
    sq = (df["rel_error"] ** 2 * df["weights"]).sum() / df["weights"].sum()
    df.loc[len(df)] = {"layer": "total", "shape": "", **total, "rel_error": math.sqrt(sq)}
    df["ratio"] = df["fp32_bytes"] / df["bytes"]
    cols = ["layer", "shape", "weights", "groups", "code_bytes", "scale_bytes", "zero_bytes",
            "bytes", "fp32_bytes", "ratio", "rel_error"]  # fmt: skip
    return df[cols].set_index("layer")


def outlier_table(model: nn.Module, bits: int = 8) -> pd.DataFrame:
    """How spread out each quantizable layer's weights are, and what that costs per tensor.

    Args:
        model: the float model.
        bits: bits of the per-tensor and per-channel comparison.

    Returns:
        One row per layer: ``max_over_mean`` (max |w| / mean |w| over the matrix),
        ``row_max_over_mean`` (the median over rows of each row's max |w| / mean |w|), and the
        relative error ||W - W_hat|| / ||W|| of ``bits``-bit per-tensor and per-channel formats.
    """
    rows = []
    for name, lin in quantizable_linears(model):
        w = lin.weight.detach().float()
        a = w.abs()
        row_ratio = (a.amax(dim=1) / a.mean(dim=1).clamp_min(1e-30)).median()
        errs = {}
        for scope, per_tensor in (("per_tensor", True), ("per_channel", False)):
            w_hat, _ = quantize_weight_groups(w, bits, None, per_tensor)
            errs[f"rel_error_{scope}"] = float((w - w_hat).norm() / w.norm().clamp_min(1e-30))
        rows.append({"layer": name, "max_over_mean": float(a.max() / a.mean().clamp_min(1e-30)),
                     "row_max_over_mean": float(row_ratio), **errs})  # fmt: skip
    return pd.DataFrame(rows).set_index("layer")


def dynamic_linear_bytes(qmodel: nn.Module, names: Sequence[str]) -> pd.DataFrame:
    """Bytes of the int8 weights of a ``torch.ao`` dynamically quantized model's ``Linear`` layers,
    as torch keeps them: one byte per weight plus the scales and zero points at their own dtypes.

    Args:
        qmodel: the output of ``quantize_dynamic`` (``dynamic_int8``).
        names: the layers to count (e.g. those of ``quantizable_linears`` of the float model).

    Returns:
        One row per layer: ``qscheme``, ``weights``, ``bytes`` (int8 codes, scales and zero
        points), ``fp32_bytes``, ``ratio``; plus a "total" row.
    """
    rows = []
    for name in names:
        qw = qmodel.get_submodule(name).weight()  # the packed weight, unpacked
        if qw.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            extra = 8 + 8  # a float64 scale and an int64 zero point, as torch holds them
        else:
            s, z = qw.q_per_channel_scales(), qw.q_per_channel_zero_points()
            extra = s.numel() * s.element_size() + z.numel() * z.element_size()
        rows.append({"layer": name, "qscheme": str(qw.qscheme()).removeprefix("torch."),
                     "weights": qw.numel(), "bytes": qw.numel() * qw.element_size() + extra,
                     "fp32_bytes": qw.numel() * 4})  # fmt: skip
    df = pd.DataFrame(rows)
    df.loc[len(df)] = {"layer": "total", "qscheme": "", "weights": df.weights.sum(),
                       "bytes": df.bytes.sum(), "fp32_bytes": df.fp32_bytes.sum()}  # fmt: skip
    df["ratio"] = df.fp32_bytes / df.bytes
    return df.set_index("layer")
