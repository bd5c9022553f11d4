"""Bits per character of a language model on a test text, and its intervals by block bootstrap.

A character model's loss on one character, in bits, is -log2 of the probability it gave the
character that came next; its mean over a test text is the model's **bits per character**
(``bits_per_char``). Two models scored on the same characters are compared as a paired difference.

The losses of neighbouring characters are not independent: within a word, a line or a speech the
next character is easy or hard together, and a model that evaluates non-overlapping windows sees
little context at the start of each window and much at its end. Resampling single characters
(an i.i.d. bootstrap) would then make the intervals far too narrow. The intervals here are a
moving block bootstrap (Kunsch 1989, "The jackknife and the bootstrap for general stationary
observations", Annals of Statistics 17:1217-1241): each resample is ``ceil(n / L)`` blocks of
``L`` consecutive characters, their starts drawn uniformly from the ``n - L + 1`` possible ones,
and the statistic is its mean; the interval is the percentiles of those means. A block must be
longer than the range over which the losses are correlated. The default ``BLOCK_LENGTH`` = 128
characters is one context window of the default model, so a block holds a window's whole cycle
of little to full context and the span of text one prediction can look at. On synthetic losses
whose differences are AR(1) with correlation 0.8^k at lag k (tests/test_bpc.py), 100-character
blocks cover the true difference in about 95% of draws and blocks of 1 (the i.i.d. bootstrap) in
about half.

``paired_bpc_difference`` and ``bpc_interval`` follow ``stats.paired_difference`` and
``stats.accuracy_interval``: dicts with the estimate, ``low``, ``high``, ``n`` and ``confidence``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nbhelpers.core.params import ParameterError, check_fraction, check_int, check_seed
from nbhelpers.measure.inputs import _Described
from nbhelpers.measure.verdicts import verdict

#: The default block length of the bootstrap, in characters: one context window of the default
#: model (see the module's docstring for why).
BLOCK_LENGTH = 128
#: The name of the interval method, as ``paired_difference``'s ``method``.
METHOD = "moving block bootstrap"


def char_losses(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 64
) -> np.ndarray:
    """Each target character's loss in bits, in the text's order, in evaluation mode.

    Args:
        model: maps (batch, tokens) indices to (batch, tokens, vocab) logits; its device is used
            and its training mode restored afterwards.
        x: (windows, context) int64 inputs, e.g. from ``core.text.eval_windows``.
        y: (windows, context) int64 targets, ``x`` shifted by one.
        batch_size: windows per forward pass, at least 1.

    Returns:
        A 1-D float64 array of ``x.numel()`` losses, -log2 p(next character), window by window.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.numel() == 0:
        raise ParameterError("x", _Described(x), "a non-empty (windows, context) index tensor")
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        raise ParameterError("y", _Described(y), f"an index tensor of x's shape {tuple(x.shape)}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
                logits = model(xb).float()
                nats = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none")
                out.append(nats.double().cpu())
    finally:
        model.train(was_training)
    return (torch.cat(out) / math.log(2)).numpy()


def bits_per_char(losses: Any) -> float:
    """The mean of per-character losses in bits.

    Args:
        losses: a 1-D array of per-character losses (``char_losses``).

    Returns:
        Bits per character.
    """
    return float(np.mean(_as_losses("losses", losses)))


def _as_losses(name: str, losses: Any) -> np.ndarray:
    allowed = "a non-empty 1-D array of finite per-character losses (bits)"
    try:
        arr = np.asarray(losses, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ParameterError(name, _Described(losses), allowed) from e
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ParameterError(name, _Described(losses), allowed)
    return arr


def block_bootstrap_means(
    values: Any, block_length: int = BLOCK_LENGTH, n_boot: int = 2000, seed: int = 0
) -> np.ndarray:
    """Means of moving-block bootstrap resamples of a series.

    Each resample joins ``ceil(n / block_length)`` blocks of ``block_length`` consecutive values,
    their starts drawn uniformly (with replacement) from the ``n - block_length + 1`` possible
    ones; ``block_length=1`` is the ordinary i.i.d. bootstrap.

    Args:
        values: a 1-D array, in order (e.g. per-character losses, or their paired differences).
        block_length: values per block, from 1 to ``len(values)``.
        n_boot: resamples, at least 100.
        seed: seed of the resampling (``numpy.random.default_rng``).

    Returns:
        An array of ``n_boot`` resample means.
    """
    v = _as_losses("values", values)
    n = len(v)
    block_length = check_int("block_length", block_length, minimum=1, maximum=n)
    n_boot = check_int("n_boot", n_boot, minimum=100)
    rng = np.random.default_rng(check_seed("seed", seed))
    cumsum = np.concatenate([[0.0], np.cumsum(v)])
    block_sums = cumsum[block_length:] - cumsum[:-block_length]  # one per possible start
    k = -(-n // block_length)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // k)  # resamples per draw, to bound memory
    for i in range(0, n_boot, chunk):
        starts = rng.integers(0, len(block_sums), size=(min(chunk, n_boot - i), k))
        means[i : i + len(starts)] = block_sums[starts].sum(axis=1) / (k * block_length)
    return means


def _percentiles(means: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bpc_interval(
    losses: Any,
    confidence: float = 0.95,
    block_length: int = BLOCK_LENGTH,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """One model's bits per character with a moving-block bootstrap percentile interval.

    Args:
        losses: its per-character losses in bits, in the text's order (``char_losses``).
        confidence: the confidence level, strictly between 0 and 1.
        block_length: characters per block (``BLOCK_LENGTH``: one context window).
        n_boot: resamples, at least 100.
        seed: seed of the resampling.

    Returns:
        A dict with ``bpc``, ``low``, ``high`` (bits per character), ``n`` (characters),
        ``block_length``, ``method`` and ``confidence``.
    """
    v = _as_losses("losses", losses)
    confidence = check_fraction("confidence", confidence)
    low, high = _percentiles(block_bootstrap_means(v, block_length, n_boot, seed), confidence)
    return {
        "bpc": float(v.mean()),
        "low": low,
        "high": high,
        "n": len(v),
        "block_length": block_length,
        "method": METHOD,
        "confidence": confidence,
    }


def paired_bpc_difference(
    losses_a: Any,
    losses_b: Any,
    confidence: float = 0.95,
    block_length: int = BLOCK_LENGTH,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Bits per character of model B minus model A on the same characters, with a paired
    moving-block bootstrap interval (the blocks resample the per-character differences, so both
    models are resampled on the same characters).

    Args:
        losses_a: model A's (e.g. the baseline's) per-character losses in bits, in text order.
        losses_b: model B's, on the same characters in the same order.
        confidence: the confidence level, strictly between 0 and 1.
        block_length: characters per block (``BLOCK_LENGTH``: one context window).
        n_boot: resamples, at least 100.
        seed: seed of the resampling.

    Returns:
        A dict with ``difference``, ``low``, ``high`` (bits per character, B - A: negative is
        better), ``bpc_a``, ``bpc_b``, ``n``, ``block_length``, ``method``, ``confidence`` and
        ``verdict`` for B against A: "better" when the whole interval is below zero (fewer bits),
        "worse" when above, else "within noise".
    """
    a, b = _as_losses("losses_a", losses_a), _as_losses("losses_b", losses_b)
    if len(a) != len(b):
        raise ParameterError(
            "losses_b",
            _Described(losses_b),
            f"losses of the same length as losses_a ({len(a)}): the same test characters",
        )
    confidence = check_fraction("confidence", confidence)
    diff = b - a
    low, high = _percentiles(block_bootstrap_means(diff, block_length, n_boot, seed), confidence)
    return {
        "difference": float(diff.mean()),
        "low": low,
        "high": high,
        "bpc_a": float(a.mean()),
        "bpc_b": float(b.mean()),
        "n": len(a),
        "block_length": block_length,
        "method": METHOD,
        "confidence": confidence,
        "verdict": verdict(-high, -low),  # fewer bits is better
    }
