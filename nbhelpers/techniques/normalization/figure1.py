"""Ioffe and Szegedy's (2015) Figure 1(a) at the paper's settings: their MNIST network
(``sigmoid_net``: 3 x 100 sigmoid units, BN optional, with the paper's binary input and small
Gaussian initial weights when asked), test accuracy recorded every few training steps
(``StepAccuracy``, an ``after_step`` hook of ``nbhelpers.core.train.fit``), and where one curve
stops being above the other (``first_not_above``, ``above_share``; ``step_curves`` and
``compare_curves`` for the runs of a sweep).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from nbhelpers.core.models import build_model
from nbhelpers.core.params import ParameterError, check_float, check_int

#: Rows of ``StepAccuracy.frame``.
CURVE_COLUMNS = ("step", "accuracy")


class Binarize(nn.Module):
    """Pixels above ``threshold`` become 1, the others 0 (the paper's "28x28 binary image").

    Args:
        threshold: the cut, in [0, 1) for pixels scaled to [0, 1].
    """

    def __init__(self, threshold: float = 0.5):
        super().__init__()
        self.threshold = check_float("threshold", threshold, 0.0, 1.0, high_inclusive=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The binary image, in the input's dtype."""
        return (x > self.threshold).to(x.dtype)

    def extra_repr(self) -> str:
        """The threshold, in the module's printout."""
        return f"threshold={self.threshold:g}"


@torch.no_grad()
def gaussian_init(model: nn.Module, std: float) -> nn.Module:
    """Draw every Linear weight from ``N(0, std^2)`` and set its bias to 0, in place.

    Uses torch's global generator: seed it first (``seed_everything``) for a repeatable draw.

    Args:
        model: the model.
        std: the standard deviation (> 0).

    Returns:
        The model.
    """
    check_float("std", std, 0.0, low_inclusive=False)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no Linear layer")
    for m in linears:
        m.weight.normal_(0.0, std)
        if m.bias is not None:
            m.bias.zero_()
    return model


def sigmoid_net(
    image_shape: Sequence[int], batchnorm: bool, paper_std: float = 0.0, hidden: int = 100
) -> nn.Module:
    """Ioffe and Szegedy's MNIST network: three hidden layers of ``hidden`` sigmoid units, a
    batch norm after each hidden Linear layer when ``batchnorm``.

    Args:
        image_shape: (channels, height, width) of one input.
        batchnorm: insert ``BatchNorm1d`` before each sigmoid.
        paper_std: 0 builds the shared MLP family's network (torch's initial weights, the pixels
            as given); > 0 the paper's: binary pixels (``Binarize`` in front) and every Linear
            weight drawn from ``N(0, paper_std^2)``, biases 0 ("small random Gaussian values").
        hidden: units per hidden layer.

    Returns:
        The model (seed torch first for a repeatable draw).
    """
    check_float("paper_std", paper_std, 0.0)
    model = build_model(
        "mlp", image_shape, batchnorm=batchnorm, activation="sigmoid", hidden=(hidden,) * 3
    )
    if paper_std == 0:
        return model
    return nn.Sequential(Binarize(0.5), *gaussian_init(model, paper_std))


class StepAccuracy:
    """An ``after_step`` hook for ``train.fit``: every ``every`` optimizer steps, the model's
    accuracy on fixed images (the paper's held-out test images).

    The images are scored in evaluation mode in chunks of ``batch``, without gradients and without
    a DataLoader (whose iterator draws from torch's global generator), then the model goes back to
    training mode: the training run itself is unchanged.

    Args:
        x: the images (a tensor the model takes).
        y: their labels.
        every: score after every this many steps (steps count from 1).
        batch: images per forward pass.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, every: int, batch: int = 5000):
        self.every, self.batch = check_int("every", every, 1), check_int("batch", batch, 1)
        if len(x) != len(y) or len(y) == 0:
            raise ParameterError("y", f"{len(y)} labels", f"one label per image ({len(x)})")
        self.x, self.y, self.step = x, y, 0
        self.rows: list[tuple[int, float]] = []

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> None:
        """Count the step; score the images when it is a multiple of ``every``."""
        self.step += 1
        if self.step % self.every:
            return
        device = next(model.parameters()).device
        model.eval()
        hits = 0
        for i in range(0, len(self.y), self.batch):
            logits = model(self.x[i : i + self.batch].to(device))
            hits += int((logits.argmax(1).cpu() == self.y[i : i + self.batch]).sum())
        model.train()
        self.rows.append((self.step, hits / len(self.y)))

    def frame(self) -> pd.DataFrame:
        """One row per scoring: step, accuracy."""
        return pd.DataFrame(self.rows, columns=list(CURVE_COLUMNS))


def first_not_above(steps: Sequence[int], upper: Sequence[float], lower: Sequence[float]) -> float:
    """The first step at which ``upper`` is not strictly above ``lower``; NaN if it always is.

    Args:
        steps: the steps of the curves, increasing.
        upper: the curve that should stay above (e.g. with BN), one value per step.
        lower: the other curve.

    Returns:
        The step, or NaN.
    """
    s, a, b = (np.asarray(v, dtype=float) for v in (steps, upper, lower))
    if not len(s) == len(a) == len(b) or len(s) == 0:
        raise ParameterError("upper", f"{len(a)} values", f"one value per step ({len(s)})")
    if np.any(np.diff(s) <= 0):
        raise ParameterError("steps", list(steps), "increasing steps")
    not_above = np.flatnonzero(~(a > b))
    return float(s[not_above[0]]) if len(not_above) else math.nan


def above_share(upper: Sequence[float], lower: Sequence[float]) -> float:
    """Share of the points at which ``upper`` is strictly above ``lower``.

    Args:
        upper: one curve.
        lower: the other, at the same steps.

    Returns:
        A fraction in [0, 1].
    """
    a, b = np.asarray(upper, dtype=float), np.asarray(lower, dtype=float)
    if len(a) != len(b) or len(a) == 0:
        raise ParameterError("upper", f"{len(a)} values", f"as many values as lower ({len(b)})")
    return float(np.mean(a > b))


def step_curves(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The test curves of several runs in one frame.

    Args:
        runs: dicts with "bn", "lr", "seed" and "test_curve" (a ``StepAccuracy.frame``, or None
            for a run without one, which is skipped).

    Returns:
        One row per (bn, lr, seed, step): bn, lr, seed, step, accuracy.
    """
    frames = [
        r["test_curve"].assign(bn=bool(r["bn"]), lr=float(r["lr"]), seed=int(r["seed"]))
        for r in runs
        if r.get("test_curve") is not None and len(r["test_curve"])
    ]
    columns = ["bn", "lr", "seed", *CURVE_COLUMNS]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def compare_curves(curves: pd.DataFrame, lr: float) -> dict[str, Any]:
    """BN's test curve against no-BN's at one learning rate: where BN is above.

    Args:
        curves: ``step_curves`` (both BN settings at ``lr``, the same steps).
        lr: the learning rate.

    Returns:
        lr; points and last_step; the mean over seeds of each curve (``mean``: step -> {"no BN",
        "BN"}); share_above and first_step_not_above (NaN: never) of the means; the same first
        step per seed (``seed_first_not_above``, BN and no-BN of one seed paired); the last mean
        accuracies (``bn_last``, ``no_bn_last``) and the smallest gap in points with its step.
    """
    at = curves[curves["lr"].astype(float) == float(lr)]
    if set(at["bn"]) != {False, True}:
        raise ParameterError("lr", lr, "a rate with curves both with and without BN")
    mean = at.groupby(["step", "bn"])["accuracy"].mean().unstack("bn").dropna()
    steps, bn, plain = mean.index.to_numpy(), mean[True].to_numpy(), mean[False].to_numpy()
    by_seed = {}
    for seed, s in at.groupby("seed"):
        p = s.pivot(index="step", columns="bn", values="accuracy").dropna()
        if {False, True} <= set(p.columns):
            by_seed[int(seed)] = first_not_above(p.index, p[True], p[False])
    gap = 100 * (bn - plain)
    return {
        "lr": float(lr),
        "points": len(steps),
        "last_step": int(steps[-1]),
        "mean": {int(t): {"no BN": float(a), "BN": float(b)} for t, a, b in zip(steps, plain, bn)},
        "share_above": above_share(bn, plain),
        "first_step_not_above": first_not_above(steps, bn, plain),
        "seed_first_not_above": by_seed,
        "bn_last": float(bn[-1]),
        "no_bn_last": float(plain[-1]),
        "smallest_gap_points": float(gap.min()),
        "smallest_gap_step": int(steps[int(np.argmin(gap))]),
    }
