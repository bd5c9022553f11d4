"""Lottery tickets (Frankle and Carbin 2019; Frankle et al. 2020): a dense run with snapshots, its
mask on rewound or fresh weights, and the tickets against the control over seeds.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from nbhelpers.core.models import reinitialized
from nbhelpers.core.params import ParameterError, check_float, check_int
from nbhelpers.core.train import fit, seed_everything
from nbhelpers.measure.stats import seeds_paired_difference
from nbhelpers.techniques.pruning.magnitude import (
    apply_masks,
    magnitude_prune,
    make_permanent,
    masks,
)


def train_with_snapshots(
    model: nn.Module,
    train_loader: Any,
    epochs: int,
    at: Sequence[int],
    lr: float = 1e-3,
    device: Any = "cpu",
) -> dict[int, dict[str, torch.Tensor]]:
    """Train (Adam, in place) and keep copies of the weights after the epochs in ``at``.

    Args:
        model: the model, trained in place.
        train_loader: training batches.
        epochs: epochs to train.
        at: epochs after which to copy the state (0: before training).
        lr: Adam learning rate.
        device: where to train.

    Returns:
        epoch -> a CPU copy of the ``state_dict`` then (epoch 0 always included).
    """
    snaps = {0: {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
    steps, done = max(1, len(train_loader)), [0]

    def keep_snapshot(m: nn.Module) -> None:
        done[0] += 1
        if done[0] % steps == 0 and done[0] // steps in at:
            snaps[done[0] // steps] = {
                k: v.detach().cpu().clone() for k, v in m.state_dict().items()
            }

    fit(model, train_loader, epochs=epochs, lr=lr, after_step=keep_snapshot, device=device,
        progress=False)  # fmt: skip
    return snaps


def rewound_ticket(
    build: Callable[[], nn.Module],
    state: Mapping[str, torch.Tensor],
    layer_masks: Mapping[str, torch.Tensor],
) -> nn.Module:
    """A ticket before its training: a new model holding ``state`` under ``layer_masks``.

    Args:
        build: makes a model of the architecture.
        state: the saved weights to rewind to (a ``state_dict``).
        layer_masks: layer name -> mask (``masks``).

    Returns:
        The pruned model: each masked layer's ``weight_orig`` is the saved weight and its
        ``weight`` the saved weight times the mask.
    """
    model = build()
    model.load_state_dict(state)
    return apply_masks(model, layer_masks)


def lottery_ticket(
    build: Callable[[], nn.Module],
    train_loader: Any,
    epochs: int,
    sparsity: float,
    rewind: Sequence[int],
    seed: int,
    lr: float = 1e-3,
    device: Any = "cpu",
) -> dict[str, nn.Module]:
    """Frankle and Carbin's experiment for one seed: a dense run, its tickets, a fresh control.

    The dense model trains ``epochs`` epochs (Adam at ``lr``) from its initialisation, keeping its
    weights after each epoch in ``rewind`` (0: the initialisation itself). One global magnitude
    threshold on the *trained* weights gives the mask. A ticket rewound to epoch ``k`` is the mask
    on the weights of epoch ``k``, trained ``epochs - k`` more epochs (Frankle et al. 2020 rewind to
    an early epoch; Frankle and Carbin 2019 to the initialisation); the control is the same mask
    on fresh weights (``models.reinitialized`` with ``seed + 1``), trained all ``epochs``.

    Args:
        build: makes the untrained model (called after ``seed_everything(seed)``).
        train_loader: training batches (its shuffle continues from run to run).
        epochs: epochs of the dense run.
        sparsity: fraction of the prunable weights removed, in (0, 1).
        rewind: epochs to rewind to, each in ``[0, epochs)``.
        seed: seed of the initialisation and of every run.
        lr: Adam learning rate of every run.
        device: where to train.

    Returns:
        {"dense": ..., "rewound to epoch k": ... for each k, "fresh weights": ...}: models on the
        CPU in eval mode, the pruned ones made permanent.
    """
    check_int("epochs", epochs, minimum=1)
    check_float("sparsity", sparsity, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    bad = [k for k in rewind if not isinstance(k, int) or not 0 <= k < epochs]
    if bad or not rewind:
        raise ParameterError("rewind", list(rewind), f"epochs from 0 to {epochs - 1}")
    seed_everything(seed)
    dense = build()
    snaps = train_with_snapshots(dense, train_loader, epochs, rewind, lr, device)
    mask = masks(magnitude_prune(copy.deepcopy(dense), sparsity, "global"))
    out = {"dense": dense.cpu().eval()}
    starts = {f"rewound to epoch {k}": (snaps[k], epochs - k) for k in sorted(set(rewind))}
    starts["fresh weights"] = (reinitialized(build(), seed + 1).state_dict(), epochs)
    for name, (state, n_epochs) in starts.items():
        model = rewound_ticket(build, state, mask)
        seed_everything(seed)
        fit(model, train_loader, epochs=n_epochs, lr=lr, device=device, progress=False)
        out[name] = make_permanent(model.cpu().eval())
    return out


def lottery_table(
    correct: Mapping[str, Sequence[Any]], control: str = "fresh weights"
) -> pd.DataFrame:
    """Tickets against the fresh-weights control, over seeds, on the same test images.

    Args:
        correct: run name -> one boolean vector per seed (right or wrong on each test image), the
            seeds in the same order for every run.
        control: the run every other run is compared with.

    Returns:
        One row per run: seeds, mean and sd of the test accuracy, and the mean difference from the
        control in points with its paired 95% interval and verdict
        (``stats.seeds_paired_difference``).
    """
    base = np.stack([np.asarray(c, bool) for c in correct[control]])
    rows = []
    for name, runs in correct.items():
        acc = np.stack([np.asarray(c, bool) for c in runs])
        d = seeds_paired_difference(base, acc) if name != control else {}
        per_seed = acc.mean(1)
        rows.append({
            "run": name, "seeds": len(acc), "test_mean": float(per_seed.mean()),
            "test_sd": float(per_seed.std(ddof=1)) if len(acc) > 1 else float("nan"),
            f"vs {control} (points)": d.get("difference", 0.0),
            "low": d.get("low", float("nan")), "high": d.get("high", float("nan")),
            "verdict": d.get("verdict", "control"),
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("run")
