"""How fast a model is: latency at several batch sizes, per-layer and kernel timings."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from nbhelpers.core.train import Device, module_device, torch_threads
from nbhelpers.measure.hits import input_device

Predictor = Callable[[torch.Tensor], object]


def _as_predictor(model: nn.Module | Predictor) -> Predictor:
    if isinstance(model, nn.Module):
        model.eval()
    return model


def synchronizer(device: Device | None) -> Callable[[], None]:
    """A call that waits for the queued work of ``device``: ``torch.cuda.synchronize`` on CUDA.

    CUDA kernels run asynchronously: a clock read right after a call measures only the launch.
    Other devices (the CPU) return when the work is done, and get a call that does nothing.

    Args:
        device: the device the timed work runs on (None: the CPU).

    Returns:
        The synchronizing call, without arguments.
    """
    if device is not None and torch.device(device).type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_call(
    fn: Callable[[], object],
    warmup: int = 5,
    repeats: int = 30,
    min_sample_s: float = 2e-3,
    device: Device | None = None,
) -> list[float]:
    """Time a call: warm up, calibrate inner loops to ``min_sample_s``, return per-call seconds.

    Args:
        fn: the call to time, without arguments.
        warmup: calls made first and thrown away.
        repeats: number of timing samples.
        min_sample_s: each sample repeats the call until it lasts at least this long.
        device: where ``fn`` runs; on CUDA each sample waits for the device before the clock
            starts and before it stops (``synchronizer``).

    Returns:
        ``repeats`` per-call durations in seconds.
    """
    sync = synchronizer(device)
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_sample_s / once))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        samples.append((time.perf_counter() - t0) / inner)
    return samples


def latency(
    models: Mapping[str, nn.Module | Predictor],
    example: torch.Tensor,
    batch_sizes: Sequence[int] = (1, 256),
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    rounds: int = 3,
) -> pd.DataFrame:
    """Median latency of several models side by side, in one run, with a fixed thread count.

    The models take turns (``rounds`` rounds of ``repeats`` samples each) so that a slow phase of
    the machine hits them all alike. Each module gets its batch on its own device (CUDA timings
    wait for the device, see ``time_call``); callables get CPU tensors.

    Args:
        models: name -> module or callable taking a batch tensor.
        example: real inputs (n, ...) to draw batches from; repeated when a batch is larger.
        batch_sizes: batch sizes to time.
        threads: ``torch.set_num_threads`` during the measurement (restored after).
        warmup: calls thrown away before each model's first sample.
        repeats: samples per model per round.
        rounds: rounds of alternation between the models.

    Returns:
        One row per (model, batch_size): median_ms, p25_ms, p75_ms, per_sample_us.
    """
    rows = []
    with torch_threads(threads):
        for bs in batch_sizes:
            idx = torch.arange(bs, device=example.device) % len(example)
            batch = example[idx].contiguous()
            on = {name: batch.to(input_device(m)) for name, m in models.items()}
            samples: dict[str, list[float]] = {name: [] for name in models}
            with torch.inference_mode():
                for r in range(rounds):
                    for name, m in models.items():
                        pred, x = _as_predictor(m), on[name]
                        n_warm = warmup if r == 0 else 1
                        samples[name] += time_call(
                            lambda: pred(x), n_warm, repeats, device=x.device
                        )
            for name, s in samples.items():
                q = np.percentile(s, [25, 50, 75]) * 1e3
                rows.append(
                    {
                        "model": name,
                        "batch_size": bs,
                        "median_ms": statistics.median(s) * 1e3,
                        "p25_ms": q[0],
                        "p75_ms": q[2],
                        "per_sample_us": statistics.median(s) * 1e6 / bs,
                    }
                )
    return pd.DataFrame(rows)


@torch.no_grad()
def layer_times(
    model: nn.Sequential, x: torch.Tensor, repeats: int = 15, threads: int = 1
) -> pd.Series:
    """Median time of each layer of a Sequential on the input it really receives, in milliseconds.

    Layers run on the model's device (CUDA timings wait for the device).

    Args:
        model: the Sequential model (eval mode).
        x: the input batch (moved to the model's device).
        repeats: timing samples per layer.
        threads: ``torch.set_num_threads`` while timing (restored after).

    Returns:
        A Series indexed "position type" (e.g. "2 MaxPool2d") of median milliseconds.
    """
    out = {}
    with torch_threads(threads):
        model.eval()
        device = module_device(model)
        h = x.to(device)
        for i, layer in enumerate(model):
            s = sorted(time_call(lambda: layer(h), 2, repeats, device=device))
            out[f"{i} {type(layer).__name__}"] = s[len(s) // 2] * 1e3
            h = layer(h)
    return pd.Series(out, name="ms")
