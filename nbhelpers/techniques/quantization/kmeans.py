"""Deep Compression's weight sharing: k-means codebooks per layer, against a uniform grid of as
many levels."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from nbhelpers.core.params import ParameterError, check_int
from nbhelpers.techniques.quantization.affine import WEIGHT_LAYERS, quantize_weights, sqnr_db


def kmeans_weights(model: nn.Module, bits: int, seed: int = 0) -> tuple[nn.Module, pd.DataFrame]:
    """Deep Compression's weight sharing: each layer's weights snapped to 2^bits shared values.

    Per Linear/Conv2d layer, k-means (scikit-learn ``KMeans``, Lloyd's algorithm, one start) finds
    ``2**bits`` centroids of the layer's weights; every weight is replaced by its nearest centroid,
    so the layer stores a ``bits``-bit index per weight and one codebook of ``2**bits`` floats. The
    centroids start spread evenly between the smallest and the largest weight, Han et al.'s
    *linear* initialisation, which keeps the few large weights represented; Lloyd's iterations
    then move them to where the weights are dense, a non-uniform grid. Biases stay float.

    Args:
        model: the float model (left unchanged).
        bits: index width, 1 to 8 (2 to 256 shared values per layer).
        seed: seed of scikit-learn's k-means.

    Returns:
        (the copy in eval mode, one row per layer: layer, weights, distinct values, mse).
    """
    bits = check_int("bits", bits, minimum=1, maximum=8)
    out, rows = copy.deepcopy(model).eval(), []
    with torch.no_grad():
        for name, m in out.named_modules():
            if not isinstance(m, WEIGHT_LAYERS):
                continue
            w = m.weight.detach().cpu().double().reshape(-1).numpy()
            centroids, labels = linear_kmeans(w, 2**bits, seed)
            shared = centroids[labels].reshape(m.weight.shape)
            m.weight.copy_(torch.from_numpy(shared).to(m.weight))
            rows.append({"layer": name, "weights": w.size, "distinct values": len(centroids),
                         "mse": float(((shared.reshape(-1) - w) ** 2).mean())})  # fmt: skip
    return out, pd.DataFrame(rows)


def linear_kmeans(values: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One-dimensional k-means with Han et al.'s linear initialisation.

    The centroids start evenly spaced between the smallest and the largest value, then Lloyd's
    iterations (scikit-learn ``KMeans``, one start) move them. With fewer distinct values than
    ``k``, there are as many centroids as distinct values.

    Args:
        values: the numbers to cluster (any shape, at least one).
        k: the number of centroids wanted, >= 1.
        seed: seed of scikit-learn's k-means.

    Returns:
        (centroids as float64, the centroid index of every value, flattened).
    """
    from sklearn.cluster import KMeans

    check_int("k", k, minimum=1)
    v = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    if v.size == 0:
        raise ParameterError("values", "an empty array", "at least one value")
    k = min(k, len(np.unique(v)))
    init = np.linspace(v.min(), v.max(), k).reshape(-1, 1)
    km = KMeans(k, init=init, n_init=1, random_state=seed).fit(v)
    return km.cluster_centers_.reshape(-1), km.labels_.astype(np.int64)


def kmeans_vs_uniform(
    model: nn.Module, loader: DataLoader, bits: Sequence[int], seed: int = 0
) -> pd.DataFrame:
    """k-means weight sharing against uniform asymmetric per-tensor weights at the same bits.

    Both give every layer one grid of ``2**b`` values (one codebook, one scale and zero point), so
    the comparison isolates where the levels sit. Biases stay float; activations are not quantized.

    Args:
        model: the float model.
        loader: test batches (the same images for every model: paired differences).
        bits: bit widths to compare.
        seed: seed of the k-means.

    Returns:
        One row per bit width: weight SQNR (dB, pooled over layers) and test accuracy of each grid,
        and k-means minus uniform in accuracy points with its paired 95% interval and verdict
        (``stats.paired_difference``).
    """
    from nbhelpers.measure import correct
    from nbhelpers.measure.stats import paired_difference

    ws = [m.weight.detach().reshape(-1) for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
    w, rows = torch.cat(ws), []
    for b in bits:
        grids = {
            "k-means": kmeans_weights(model, b, seed)[0],
            "uniform": quantize_weights(model, b, symmetric=False, per_channel=False),
        }
        hits = {k: correct(m, loader) for k, m in grids.items()}
        d = paired_difference(hits["uniform"], hits["k-means"])
        row = {"bits": b}
        for k, m in grids.items():
            w_hat = torch.cat([x.weight.detach().reshape(-1) for x in m.modules()
                               if isinstance(x, WEIGHT_LAYERS)])  # fmt: skip
            row[f"{k} sqnr_db"] = sqnr_db(w, w_hat)
            row[f"{k} accuracy"] = float(hits[k].mean())
        rows.append({**row, "k-means minus uniform (points)": d["difference"],
                     "low": d["low"], "high": d["high"], "verdict": d["verdict"]})  # fmt: skip
    return pd.DataFrame(rows)
