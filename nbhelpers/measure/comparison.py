"""Models side by side: accuracy with paired intervals, size and latency in one table."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from nbhelpers.measure.hits import correct
from nbhelpers.measure.size import count_parameters, serialized_bytes
from nbhelpers.measure.stats import paired_table
from nbhelpers.measure.timing import latency

Predictor = Callable[[torch.Tensor], object]


def compare(
    models: Mapping[str, nn.Module | Predictor],
    loader: DataLoader,
    baseline: str,
    batch_sizes: Sequence[int] = (1, 256),
    sizes: Mapping[str, int] | None = None,
    counts: Mapping[str, Mapping[str, int]] | None = None,
    threads: int = 1,
    repeats: int = 30,
    hits: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """One table comparing models on accuracy, parameters, bytes and latency, with ratios to a
    baseline.

    Every module runs on its own device (accuracy and timing batches are moved there); callables
    get CPU tensors. All models are scored on the same test samples, so each is compared with the
    baseline by a paired 95% interval of the accuracy difference and McNemar's exact test
    (``nbhelpers.measure.stats``); the loader must not shuffle.

    Args:
        models: name -> module or callable (callables need their bytes in ``sizes``).
        loader: the test loader (accuracy, and the inputs used for timing).
        baseline: the name in ``models`` the ratios refer to.
        batch_sizes: batch sizes timed.
        sizes: name -> bytes on disk, overriding the serialized ``state_dict`` size.
        counts: name -> {"params", "nonzero"}, overriding the counted parameters.
        threads: threads used for timing.
        repeats: timing samples per round.
        hits: name -> which test samples the model gets right (``correct`` on this loader),
            already measured: used instead of running the model over the test set again.

    Returns:
        One row per model: accuracy with its Wilson 95% interval (accuracy_low, accuracy_high),
        params, nonzero, bytes, latency_ms_b<bs>, and against the baseline:
        accuracy_delta_points with its paired 95% interval (delta_low_points, delta_high_points),
        p_mcnemar, verdict ("better", "worse", "within noise"; "baseline" for the baseline),
        size_ratio (baseline bytes / bytes: "times smaller") and speedup_b<bs> (baseline latency
        / latency).
    """
    if baseline not in models:
        raise KeyError(f"baseline {baseline!r} is not among the models {list(models)}")
    if isinstance(getattr(loader, "sampler", None), torch.utils.data.RandomSampler):
        raise ValueError(
            "compare pairs the models image by image: give it a loader that does not shuffle"
        )
    sizes, counts, known = dict(sizes or {}), dict(counts or {}), dict(hits or {})
    n_test = sum(len(y) for _, y in loader)
    for name, h in known.items():
        if name not in models or np.shape(h) != (n_test,):
            raise ValueError(
                f"hits[{name!r}] must belong to a model in models and hold one entry per test "
                f"sample ({n_test}); got {np.shape(h)}"
            )
    example = torch.cat([x for x, _ in loader])[: max(batch_sizes)]
    lat = latency(models, example, batch_sizes, threads=threads, repeats=repeats)
    rows, hits = [], {}
    for name, m in models.items():
        c = counts.get(name) or (count_parameters(m) if isinstance(m, nn.Module) else {})
        if name not in sizes and not isinstance(m, nn.Module):
            raise KeyError(f"model {name!r} is a callable: give its bytes in sizes")
        hits[name] = np.asarray(known[name], bool) if name in known else correct(m, loader)
        row = {
            "model": name,
            "accuracy": float(hits[name].mean()),
            "params": c.get("params", np.nan),
            "nonzero": c.get("nonzero", np.nan),
            "bytes": sizes.get(name) if name in sizes else serialized_bytes(m),
        }
        for bs in batch_sizes:
            row[f"latency_ms_b{bs}"] = float(
                lat.query("model == @name and batch_size == @bs")["median_ms"].iloc[0]
            )
        rows.append(row)
    df = pd.DataFrame(rows).set_index("model")
    base = df.loc[baseline]
    df["accuracy_delta_points"] = (df["accuracy"] - base["accuracy"]) * 100
    paired = paired_table(hits, baseline).set_index("model").reindex(df.index)
    df.insert(df.columns.get_loc("accuracy") + 1, "accuracy_low", paired["acc_low"] / 100)
    df.insert(df.columns.get_loc("accuracy") + 2, "accuracy_high", paired["acc_high"] / 100)
    df["delta_low_points"], df["delta_high_points"] = paired["diff_low"], paired["diff_high"]
    df["p_mcnemar"], df["verdict"] = paired["p_mcnemar"], paired["verdict"]
    df["size_ratio"] = base["bytes"] / df["bytes"]
    for bs in batch_sizes:
        df[f"speedup_b{bs}"] = base[f"latency_ms_b{bs}"] / df[f"latency_ms_b{bs}"]
    return df
