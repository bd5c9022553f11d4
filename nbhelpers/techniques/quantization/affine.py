"""Uniform affine quantization from scratch, and what a bit-width sweep of it shows.

A float tensor :math:`x` is mapped to integers :math:`q \\in [q_{min}, q_{max}]` with a scale
:math:`s` and a zero point :math:`z`: :math:`q = \\mathrm{clamp}(\\mathrm{round}(x/s) + z)` and back
with :math:`\\hat x = s\\,(q - z)` (``quant_params``, ``quantize``, ``dequantize``,
``fake_quantize``); per tensor or per output channel, symmetric or asymmetric (``VARIANTS``). A
model's weights (``quantize_weights``) and its layer inputs with calibrated ranges
(``activation_ranges``, ``quantize_activations``) are fake-quantized the same way; the error is
read as MSE and SQNR, and a sweep over bit widths by ``sqnr_gain_per_bit`` and its companions.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from nbhelpers.core.params import check_int

#: Layers whose weights are quantized.
WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)


VARIANTS = {
    "asymmetric per-tensor": (False, False),
    "symmetric per-tensor": (True, False),
    "asymmetric per-channel": (False, True),
    "symmetric per-channel": (True, True),
}


def check_bits(name: str, bits: object) -> int:
    """Check a bit width: an integer from 2 to 16.

    Args:
        name: parameter name.
        bits: the given value.

    Returns:
        The bit width.
    """
    return check_int(name, bits, minimum=2, maximum=16)


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """The integer range of a bit width: signed and restricted when symmetric, unsigned otherwise.

    Args:
        bits: bit width (2 to 16).
        symmetric: True for [-(2^(b-1)-1), 2^(b-1)-1] (zero point 0), False for [0, 2^b - 1].

    Returns:
        (q_min, q_max).
    """
    check_bits("bits", bits)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _reduce(x: torch.Tensor, per_channel: bool, op) -> torch.Tensor:
    """``op`` (torch.amin or torch.amax) over the whole tensor, or over all axes but the first."""
    if not per_channel or x.dim() < 2:
        return op(x)
    return op(x, dim=tuple(range(1, x.dim())), keepdim=True)


def quant_params(
    x: torch.Tensor, bits: int = 8, symmetric: bool = False, per_channel: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of a tensor (per tensor, or per output channel along axis 0).

    Asymmetric: s = (max(x_max, 0) - min(x_min, 0)) / (q_max - q_min), z = q_min - round(x_min / s).
    Symmetric: s = max|x| / q_max, z = 0. The range always contains 0 so that 0 is exact.

    Args:
        x: the float tensor (e.g. a weight of shape (out, in) or (out, in, kh, kw)).
        bits: bit width.
        symmetric: symmetric (signed, z = 0) or asymmetric (unsigned, z from the range).
        per_channel: one (s, z) per slice along axis 0 instead of one for the whole tensor.

    Returns:
        (scale, zero_point), broadcastable against ``x``; the zero point is an integer tensor.
    """
    qmin, qmax = qrange(bits, symmetric)
    x = x.detach().float()
    lo = torch.clamp(_reduce(x, per_channel, torch.amin), max=0.0)
    hi = torch.clamp(_reduce(x, per_channel, torch.amax), min=0.0)
    if symmetric:
        scale = torch.maximum(hi, -lo) / qmax
    else:
        scale = (hi - lo) / (qmax - qmin)
    scale = torch.where(
        scale > 0, scale, torch.ones_like(scale)
    )  # an all-zero slice: any scale is exact
    zero = (
        torch.zeros_like(scale, dtype=torch.int64)
        if symmetric
        else torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int64)
    )
    return scale, zero


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    bits: int = 8,
    symmetric: bool = False,
) -> torch.Tensor:
    """Map floats to integers: q = clamp(round(x / s) + z, q_min, q_max).

    Args:
        x: the float tensor.
        scale: the scale(s), broadcastable against ``x``.
        zero_point: the zero point(s), broadcastable against ``x``.
        bits: bit width.
        symmetric: which integer range (see ``qrange``).

    Returns:
        The integers, as an int64 tensor.
    """
    qmin, qmax = qrange(bits, symmetric)
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax).to(torch.int64)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """Map integers back to floats: x_hat = s (q - z)."""
    return scale * (q - zero_point).float()


def fake_quantize(
    x: torch.Tensor, bits: int = 8, symmetric: bool = False, per_channel: bool = False
) -> torch.Tensor:
    """Quantize then dequantize a tensor: the float values an integer model would compute with.

    Args:
        x: the float tensor.
        bits: bit width.
        symmetric: symmetric or asymmetric.
        per_channel: per output channel (axis 0) or per tensor.

    Returns:
        The dequantized tensor, same shape and dtype as ``x``.
    """
    s, z = quant_params(x, bits, symmetric, per_channel)
    return dequantize(quantize(x, s, z, bits, symmetric), s, z).to(x.dtype)


def naive_rescale(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The "divide by the max and rescale" trick: x / max|x| in [-1, 1], and the max to undo it.

    It maps nothing to a finite set of levels: the result is still 32-bit floats, one distinct
    value per distinct input, so it is not quantization and saves no bytes.

    Args:
        x: the float tensor.

    Returns:
        (x / m, m) with m = max|x|.
    """
    m = x.detach().abs().max()
    return x / m, m


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean squared error between a tensor and its reconstruction."""
    return float(((x.float() - x_hat.float()) ** 2).mean())


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in decibels: 10 log10(sum x^2 / sum (x - x_hat)^2)."""
    noise = float(((x.float() - x_hat.float()) ** 2).sum())
    return (
        float("inf") if noise == 0 else 10 * float(np.log10(float((x.float() ** 2).sum()) / noise))
    )


def quantize_weights(model: nn.Module, bits: int, symmetric: bool, per_channel: bool) -> nn.Module:
    """A copy of a model whose Linear and Conv2d weights are fake-quantized (biases stay float).

    Args:
        model: the float model (left unchanged).
        bits: bit width.
        symmetric: symmetric or asymmetric.
        per_channel: per output channel or per tensor.

    Returns:
        The copy, in eval mode.
    """
    out = copy.deepcopy(model).eval()
    with torch.no_grad():
        for m in out.modules():
            if isinstance(m, WEIGHT_LAYERS):
                m.weight.copy_(fake_quantize(m.weight, bits, symmetric, per_channel))
    return out


def weight_error(
    model: nn.Module, bits: int, symmetric: bool, per_channel: bool
) -> dict[str, float]:
    """Quantization error over all Linear/Conv2d weights of a model, pooled.

    Args:
        model: the float model.
        bits: bit width.
        symmetric: symmetric or asymmetric.
        per_channel: per output channel or per tensor.

    Returns:
        {"mse": ..., "sqnr_db": ...} over the concatenated weights.
    """
    ws = [m.weight.detach() for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
    w = torch.cat([t.reshape(-1) for t in ws])
    w_hat = torch.cat([fake_quantize(t, bits, symmetric, per_channel).reshape(-1) for t in ws])
    return {"mse": mse(w, w_hat), "sqnr_db": sqnr_db(w, w_hat)}


def activation_ranges(
    model: nn.Module, loader: DataLoader, batches: int
) -> dict[str, torch.Tensor]:
    """Calibration: the smallest and largest input each Linear/Conv2d layer sees on some batches.

    Args:
        model: the float model (run in eval mode, without gradients).
        loader: calibration batches (training data).
        batches: how many of them.

    Returns:
        Layer name -> tensor([min, max]) of its inputs over those batches.
    """
    check_int("batches", batches, minimum=1)
    seen: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_m, inputs):
            x = inputs[0].detach()
            lo, hi = float(x.min()), float(x.max())
            if name in seen:
                lo, hi = min(lo, float(seen[name][0])), max(hi, float(seen[name][1]))
            seen[name] = torch.tensor([lo, hi])

        return hook

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]
    hooks = [m.register_forward_pre_hook(hook_for(n)) for n, m in layers]
    model.eval()
    try:
        with torch.no_grad():
            for b, (x, _) in enumerate(loader):
                if b >= batches:
                    break
                model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def quantize_activations(
    model: nn.Module, bits: int, ranges: Mapping[str, torch.Tensor]
) -> nn.Module:
    """A copy whose Linear/Conv2d layers fake-quantize their inputs with calibrated ranges.

    Static activation quantization from scratch: each layer's input is mapped to ``bits``-bit
    unsigned integers with one scale and zero point from its calibrated [min, max] (asymmetric,
    per tensor, the range widened to contain 0), clamped there, and dequantized. Values outside
    the calibrated range saturate, as in a deployed integer model. Weights are left as they are:
    combine with ``quantize_weights`` for both.

    Args:
        model: the float model (left unchanged).
        bits: activation bit width.
        ranges: from ``activation_ranges`` (layer name -> [min, max]).

    Returns:
        The copy in eval mode.
    """
    check_bits("bits", bits)
    out = copy.deepcopy(model).eval()
    for name, m in out.named_modules():
        if isinstance(m, WEIGHT_LAYERS):
            if name not in ranges:
                raise ValueError(f"no calibrated range for layer {name!r}")
            scale, zero = quant_params(torch.as_tensor(ranges[name]), bits, False, False)

            def hook(_m, inputs, scale=scale, zero=zero):
                x = inputs[0]
                return (dequantize(quantize(x, scale, zero, bits), scale, zero).to(x.dtype),)

            m.register_forward_pre_hook(hook)
    return out


# ---------------------------------------------------------------- reading a bit-width sweep


def sqnr_bits_span(bits: Sequence[int], min_bits: int = 4) -> tuple[int, int]:
    """The bit widths the 6 dB-per-bit rule is read between: the fewest >= ``min_bits``, the most.

    Below about 4 bits the rounding error is no longer spread evenly over a step and the rule
    stops holding; with fewer than two widths at or above ``min_bits``, all widths are used.

    Args:
        bits: the bit widths of the sweep.
        min_bits: the fewest bits where the rule is expected to hold.

    Returns:
        (low, high) bit widths.
    """
    high = [b for b in bits if b >= min_bits]
    use = high if len(set(high)) > 1 else list(bits)
    return min(use), max(use)


def sqnr_gain_per_bit(sweep: pd.DataFrame, min_bits: int = 4) -> float:
    """Mean SQNR gain per extra bit between the ``sqnr_bits_span`` widths, over models and variants.

    Args:
        sweep: rows with model, variant, bits and sqnr_db.
        min_bits: see ``sqnr_bits_span``.

    Returns:
        dB per bit (theory: 20 log10 2 = 6.02); NaN with a single bit width.
    """
    lo, hi = sqnr_bits_span(sorted(set(sweep.bits)), min_bits)
    if lo == hi:
        return float("nan")
    sq = sweep.pivot_table(index="bits", columns=["model", "variant"], values="sqnr_db")
    return float(((sq.loc[hi] - sq.loc[lo]) / (hi - lo)).mean())


def sqnr_grows_with_bits(sweep: pd.DataFrame) -> bool:
    """Whether every extra bit raised the SQNR, for every model and variant of the sweep.

    Args:
        sweep: rows with model, variant, bits and sqnr_db.

    Returns:
        True when SQNR strictly increases with the bit width in every (model, variant) series.
    """
    sq = sweep.pivot_table(
        index="bits", columns=["model", "variant"], values="sqnr_db"
    ).sort_index()
    return bool((sq.diff().iloc[1:] > 0).all().all())


def per_channel_never_worse(sweep: pd.DataFrame) -> bool:
    """Whether per-channel SQNR is at least per-tensor SQNR for every model, bit width and scheme.

    Args:
        sweep: rows with model, bits, variant (``VARIANTS`` names) and sqnr_db.

    Returns:
        True when no per-channel row falls below its per-tensor twin (1e-9 dB tolerance).
    """
    sq = sweep.pivot_table(index=["model", "bits"], columns="variant", values="sqnr_db")
    return bool(
        all(
            (sq[f"{k} per-channel"] >= sq[f"{k} per-tensor"] - 1e-9).all()
            for k in ("symmetric", "asymmetric")
        )
    )
