"""``torch.compile`` of any model, timed against eager: the first call (where the compile happens),
steady-state samples in interleaved rounds, speed-ups with bootstrap intervals, and tolerances for
"equal up to float32 rounding".

* ``try_compile`` and ``first_call``: compile a callable and time its first call at a shape; a
  failure (no C++ compiler, an unsupported operation, a Python torch.compile does not support) is
  returned as its reason instead of raised, so a lesson can say what happened and go on eagerly.
* ``fresh_cache`` / ``restore_cache``: point Inductor's on-disk cache at an empty folder, so the
  first call costs what a first run on a new machine costs (a warm cache skips most of it).
* ``loss_and_grads`` and ``train_step``: one forward and backward, and a whole optimizer step.
* ``interleaved_times`` and ``speed_table``: several calls timed in alternating rounds
  (``measure.timing.time_call``), each one's median and quartiles and its speed-up over a reference
  with a 95% percentile-bootstrap interval.
* ``op_time_shares``: where a call's CPU time goes, per group of operators (matrix products and
  attention kernels, which Inductor's default mode leaves to the same library kernels, and the
  rest, which it can fuse).
* ``gamma``, ``rounding_tolerance``, ``attention_tolerance``: how far two float32 computations of
  the same function may differ when they only add in another order (Higham's gamma_n).
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from nbhelpers.core.params import ParameterError, check_choice, check_int, check_seed
from nbhelpers.core.train import Device
from nbhelpers.measure.timing import time_call

#: ``torch.compile`` modes (``torch._inductor.list_mode_options``); the CUDA-graph ones change
#: nothing on a CPU.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
#: Unit roundoff of float32: half the gap between 1 and the next float32.
UNIT_ROUNDOFF = 2.0**-24
#: Operator groups by name prefix: the library kernels that Inductor's default mode calls as they
#: are (matrix products, the fused attention), so that compiling cannot make them faster.
KERNEL_GROUPS = {
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "attention kernels": ("aten::_scaled_dot_product", "aten::_flash_attention"),
}
#: The group of every operator no prefix of ``KERNEL_GROUPS`` matches.
OTHER = "other operators"


def check_compile_mode(name: str, mode: str) -> str:
    """Check a ``torch.compile`` mode against ``COMPILE_MODES``.

    Args:
        name: the parameter named in the error.
        mode: the given mode.

    Returns:
        The mode.
    """
    return check_choice(name, mode, COMPILE_MODES)


def error_text(err: BaseException) -> str:
    """An exception as one short line: "Type: first line of the message" (at most 300 chars)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]


def try_compile(
    fn: Callable, mode: str = "default", dynamic: bool | None = False
) -> tuple[Callable | None, str]:
    """``torch.compile`` a module or function, or say why not.

    The compile itself happens at the first call (``first_call``); this only wraps, and fails
    early where torch.compile is not available at all.

    Args:
        fn: the module or function.
        mode: one of ``COMPILE_MODES``.
        dynamic: False specializes on every input shape (a new shape recompiles), None lets torch
            decide, True compiles shape-generic code.

    Returns:
        (the compiled callable, "") or (None, the reason).
    """
    check_compile_mode("mode", mode)
    try:
        return torch.compile(fn, mode=mode, dynamic=dynamic), ""
    except Exception as err:  # noqa: BLE001 - any failure is reported, not raised
        return None, error_text(err)


def first_call(
    fn: Callable | None, *args: object, grad: bool = True, device: Device | None = None
) -> tuple[object | None, float, str]:
    """Run and time one call; for a compiled callable at a new shape, the compile happens here.

    Args:
        fn: the callable (None: a compile that already failed; nothing runs).
        *args: its arguments.
        grad: False runs it under ``torch.no_grad``.
        device: where it runs (CUDA is waited for before the clock stops).

    Returns:
        (its result, seconds, "") or (None, NaN, the reason it failed).
    """
    if fn is None:
        return None, math.nan, "not compiled"
    start = time.perf_counter()
    try:
        with torch.set_grad_enabled(grad):
            out = fn(*args)
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as err:  # noqa: BLE001 - any failure is reported, not raised
        return None, math.nan, error_text(err)
    return out, time.perf_counter() - start, ""


def fresh_cache(folder: str | Path) -> str | None:
    """Point Inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``) at an emptied folder.

    A compile with an empty cache pays what a first run pays (building the C++ prelude and every
    kernel); with a warm cache most of it is read back from disk.

    Args:
        folder: the cache folder; emptied first, created if missing.

    Returns:
        The previous ``TORCHINDUCTOR_CACHE_DIR`` (None when unset), for ``restore_cache``.
    """
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder.resolve())
    _clear_inductor_caches()
    return previous


def restore_cache(previous: str | None) -> None:
    """Undo ``fresh_cache``: restore the previous ``TORCHINDUCTOR_CACHE_DIR`` (or unset it)."""
    if previous is None:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous
    _clear_inductor_caches()


def _clear_inductor_caches() -> None:
    try:
        from torch._inductor.utils import clear_caches
    except Exception:  # noqa: BLE001 - without Inductor there is nothing to clear
        return
    clear_caches()


def lm_loss(model: Callable) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The mean next-token cross-entropy of a model mapping (batch, tokens) to logits.

    Args:
        model: the model (or a compiled one).

    Returns:
        ``loss(x, y)``, a scalar in nats; compile it to fuse the loss into the model's graph.
    """

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        return F.cross_entropy(logits.flatten(0, -2), y.flatten())

    return loss


def loss_and_grads(
    loss_fn: Callable, model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward and backward from zeroed gradients, no optimizer step.

    Args:
        loss_fn: ``loss(x, y)`` computed with ``model``'s parameters (eager or compiled).
        model: the module whose gradients are read.
        x: inputs; y: targets.

    Returns:
        (the loss, detached; every parameter's gradient flattened into one vector).
    """
    model.zero_grad(set_to_none=True)
    loss = loss_fn(x, y)
    loss.backward()
    grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
    return loss.detach(), torch.cat(grads).detach()


def train_step(
    loss_fn: Callable, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], torch.Tensor]:
    """A training step on a fixed batch: zero the gradients, forward, backward, optimizer step.

    Args:
        loss_fn: ``loss(x, y)`` (eager or compiled) of the optimizer's parameters.
        optimizer: the optimizer (its step stays eager).
        x: inputs; y: targets.

    Returns:
        A call without arguments that makes one step and returns the loss.
    """

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(x, y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def interleaved_times(
    calls: Mapping[str, Callable[[], object]],
    rounds: int = 3,
    repeats: int = 5,
    warmup: int = 1,
    grad: bool = True,
    device: Device | None = None,
) -> pd.DataFrame:
    """Time several calls side by side: ``rounds`` rounds in which each call takes its turn.

    A slow phase of a shared machine then hits every call alike. Each turn is one
    ``measure.timing.time_call`` (warm-up calls, then ``repeats`` samples; a sample repeats a
    call until it lasts 2 ms).

    Args:
        calls: name -> call without arguments.
        rounds: rounds of alternation, at least 1.
        repeats: samples per call per round, at least 1.
        warmup: calls thrown away before each call's first round (one before later rounds).
        grad: False runs every call under ``torch.no_grad``.
        device: where the calls run (CUDA is waited for).

    Returns:
        Long table: ``call``, ``round``, ``seconds`` (per call), ``rounds * repeats`` rows per call.
    """
    rounds = check_int("rounds", rounds, minimum=1)
    repeats = check_int("repeats", repeats, minimum=1)
    rows = []
    with torch.set_grad_enabled(grad):
        for r in range(rounds):
            for name, fn in calls.items():
                samples = time_call(fn, warmup if r == 0 else 1, repeats, device=device)
                rows += [{"call": name, "round": r, "seconds": s} for s in samples]
    return pd.DataFrame(rows, columns=["call", "round", "seconds"])


def ratio_interval(
    reference: Sequence[float],
    other: Sequence[float],
    seed: int = 0,
    resamples: int = 2000,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Speed-up of ``other`` over ``reference`` (median over median) with a bootstrap interval.

    Each side's samples are resampled with replacement independently; the interval is the
    percentile interval of the resampled ratios.

    Args:
        reference: per-call seconds of the reference.
        other: per-call seconds of the other call.
        seed: the resampling seed.
        resamples: bootstrap resamples.
        confidence: the interval's level.

    Returns:
        (speed-up, low, high); > 1 means ``other`` is faster.
    """
    a, b = np.asarray(reference, dtype=float), np.asarray(other, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ParameterError("samples", (a.size, b.size), "at least one sample on each side")
    rng = np.random.default_rng(check_seed("seed", seed))
    ra = np.median(rng.choice(a, (resamples, a.size)), axis=1)
    rb = np.median(rng.choice(b, (resamples, b.size)), axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(ra / rb, [tail, 100 - tail])
    return float(np.median(a) / np.median(b)), float(low), float(high)


def speed_table(times: pd.DataFrame, reference: str, seed: int = 0) -> pd.DataFrame:
    """Each call's median and quartiles and its speed-up over a reference, with its interval.

    Args:
        times: ``interleaved_times``.
        reference: the call the others are compared with.
        seed: the bootstrap seed.

    Returns:
        Index ``call`` (in the order timed): ``median_ms``, ``p25_ms``, ``p75_ms``, ``samples``,
        ``speedup`` (reference median / median), ``speedup_low``, ``speedup_high``.
    """
    names = list(dict.fromkeys(times.call))
    check_choice("reference", reference, names)
    ref = times.seconds[times.call == reference].to_numpy()
    rows = []
    for name in names:
        s = times.seconds[times.call == name].to_numpy()
        q25, q75 = np.percentile(s, [25, 75]) * 1e3
        ratio, low, high = ratio_interval(ref, s, seed)
        rows.append({"call": name, "median_ms": statistics.median(s) * 1e3, "p25_ms": q25,
                     "p75_ms": q75, "samples": len(s), "speedup": ratio, "speedup_low": low,
                     "speedup_high": high})  # fmt: skip
    return pd.DataFrame(rows).set_index("call")


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null (the profiler's C++ start and stop lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def op_time_shares(
    fn: Callable[[], object], groups: Mapping[str, Sequence[str]] | None = None
) -> pd.DataFrame:
    """Where one call's CPU time goes: its operators' self time (``torch.profiler``), per group.

    Run it on the CPU: CUDA kernels run asynchronously and their time is not the CPU's.

    Args:
        fn: the call, without arguments (warm it up first: a first call also compiles).
        groups: group -> operator name prefixes (default ``KERNEL_GROUPS``); the rest is
            ``OTHER``.

    Returns:
        Index ``group`` (each of ``groups``, then ``OTHER``): ``ms`` (self CPU time summed) and
        ``share`` (of all the operators' time).
    """
    from torch.profiler import ProfilerActivity, profile

    groups = dict(KERNEL_GROUPS if groups is None else groups)
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ms = dict.fromkeys([*groups, OTHER], 0.0)
    for event in prof.key_averages():
        group = next((g for g, pre in groups.items() if event.key.startswith(tuple(pre))), OTHER)
        ms[group] += event.self_cpu_time_total / 1e3
    table = pd.DataFrame({"ms": pd.Series(ms)}).rename_axis("group")
    table["share"] = table.ms / table.ms.sum() if table.ms.sum() > 0 else math.nan
    return table


def gamma(n: int, u: float = UNIT_ROUNDOFF) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of a float sum of n products.

    Args:
        n: the number of rounded operations in a chain (a dot product of length n: n).
        u: the unit roundoff (float32: 2^-24).

    Returns:
        gamma_n; inf when n u >= 1.
    """
    n = check_int("n", n, minimum=0)
    return n * u / (1 - n * u) if n * u < 1 else math.inf


def rounding_tolerance(reduction: int, layers: int, scale: float) -> float:
    """How far two float32 computations of one network may differ when they add in other orders.

    Each of the ``layers`` reductions in a row (matrix products, softmax sums) may be off by
    gamma_n of its scale in either computation; to first order, with no layer amplifying its
    input's error, the two outputs differ by at most 2 * layers * gamma_n * scale.

    Args:
        reduction: the longest sum of one output (e.g. the MLP's hidden width, the context, or the
            batch's tokens for a weight gradient).
        layers: reductions one after the other on the longest path.
        scale: the largest |value| of the compared output.

    Returns:
        The tolerance.
    """
    layers = check_int("layers", layers, minimum=1)
    return 2 * layers * gamma(reduction) * abs(float(scale))


def attention_tolerance(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> float:
    """How far two float32 computations of causal softmax(Q K^T / sqrt(d)) V may differ.

    A score's error is at most eps = gamma_{d+1} max_ij sum_l |q_il k_jl| / sqrt(d); scores off by
    eps change each softmax weight by a factor within exp(+-2 eps), and the softmax (exponentials,
    a sum of t terms, a division, and a flash kernel's rescalings) and the weighted sum of the
    values add at most gamma_{2t+4} each, relative to max |v|. Two computations:
    2 max|v| (3 eps + 2 gamma_{2t+4}).

    Args:
        q, k, v: (..., t, d) queries, keys and values.

    Returns:
        The tolerance on the outputs' largest absolute difference.
    """
    t, d = q.shape[-2], q.shape[-1]
    dots = (q.abs() @ k.abs().transpose(-2, -1)).max().item() / math.sqrt(d)
    eps = gamma(d + 1) * dots
    return 2 * v.abs().max().item() * (3 * eps + 2 * gamma(2 * t + 4))
