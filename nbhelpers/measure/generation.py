"""How fast a character model writes: characters generated per second, models timed side by side.

Generation runs one forward pass per character on the last ``context`` characters at batch 1
(``core.transformer.generate``, no key/value cache), so its speed is that of many small forward
passes, not of one large batch.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import pandas as pd
import torch
from torch import nn

from nbhelpers.core.params import ParameterError, check_int, check_seed
from nbhelpers.core.train import torch_threads
from nbhelpers.core.transformer import generate


def generation_speed(
    models: Mapping[str, nn.Module],
    prompt_ids: torch.Tensor,
    n: int = 200,
    threads: int = 1,
    repeats: int = 3,
    seed: int = 0,
) -> pd.DataFrame:
    """Characters per second of seeded sampling, the models taking turns ``repeats`` times.

    Args:
        models: name -> character model (``CharTransformer``, or a quantized copy of one).
        prompt_ids: 1-D indices of the prompt.
        n: characters generated per timed run, at least 1.
        threads: ``torch.set_num_threads`` while timing (restored after).
        repeats: timed runs per model (after one untimed warm-up run each), at least 1.
        seed: seed of the sampler (the same text each run).

    Returns:
        One row per model: ``model``, ``chars``, ``median_seconds``, ``chars_per_s``.
    """
    if not models:
        raise ParameterError("models", {}, "at least one named model")
    n = check_int("n", n, minimum=1)
    repeats = check_int("repeats", repeats, minimum=1)
    seed = check_seed("seed", seed)
    samples: dict[str, list[float]] = {name: [] for name in models}
    with torch_threads(threads):
        for name, m in models.items():  # warm-up
            generate(m, prompt_ids, min(n, 8), 1.0, torch.Generator().manual_seed(seed))
        for _ in range(repeats):
            for name, m in models.items():
                t0 = time.perf_counter()
                generate(m, prompt_ids, n, 1.0, torch.Generator().manual_seed(seed))
                samples[name].append(time.perf_counter() - t0)
    rows = [
        {
            "model": name,
            "chars": n,
            "median_seconds": statistics.median(s),
            "chars_per_s": n / statistics.median(s),
        }
        for name, s in samples.items()
    ]
    return pd.DataFrame(rows)
