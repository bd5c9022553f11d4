"""The shared trained baselines every notebook compares against, trained once and cached."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
from torch import nn

from .cache import cached_model, runtime_key
from .data import Split, load_split, loaders
from .facts import fact_table
from .models import build_model
from .params import check_choice
from .train import SCHEDULES, anneal, fit, seed_everything

#: The recipe of the shared baselines: Adam at 1e-3, batches of 64, no weight decay.
RECIPE = {"optimizer": "adam", "lr": 1e-3, "batch_size": 64, "weight_decay": 0.0}
EPOCHS = {"mlp": 15, "lenet5": 12, "lenet5_caffe": 12}


@dataclass
class Baseline:
    """A trained shared baseline with its data and training history."""

    model: nn.Module
    split: Split
    history: pd.DataFrame
    config: dict
    from_cache: bool

    @property
    def flat(self) -> bool:
        """Whether the model takes flat vectors (the MLP) rather than images."""
        return self.config["arch"] == "mlp"

    def loaders(self, batch_size: int | None = None, seed: int | None = None) -> dict:
        """Train/val/test loaders of the baseline's split, shaped for its model.

        Args:
            batch_size: training batch size (default: the shared recipe's).
            seed: seed of the training shuffle (default: the baseline's seed).

        Returns:
            A dict with keys "train", "val", "test".
        """
        bs = batch_size or RECIPE["batch_size"]
        return loaders(
            self.split, bs, flat=self.flat, seed=self.config["seed"] if seed is None else seed
        )


def get_baseline(
    arch: str = "mlp",
    dataset: str = "mnist",
    seed: int = 0,
    epochs: int | None = None,
    limit: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    train_size: int | None = None,
    schedule: str = "constant",
) -> Baseline:
    """The shared baseline for (dataset, arch, seed, epochs), from the cache or trained now.

    Args:
        arch: "mlp" (784-300-100-10) or "lenet5".
        dataset: "mnist5k", "digits" or "mnist".
        seed: seed of the split, the initialisation and the shuffle.
        epochs: training epochs (default: ``EPOCHS[arch]``).
        limit: use only this many samples (quick runs); None uses all.
        device: where to train if the cache misses.
        progress: show the training progress bar.
        train_size: train on a stratified subset of this many training images (None: all);
            validation and test stay the split's own (for "mnist": the official 10,000 test images).
        schedule: learning rate over the epochs, "constant" (the shared recipe) or "cosine"
            (annealed to 0 over ``epochs``; the papers' dense errors need a decaying rate).

    Returns:
        The ``Baseline`` (model on the CPU, in eval mode).
    """
    check_choice("BASELINE_SCHEDULE", schedule, SCHEDULES)
    split = load_split(dataset, seed, limit=limit, train_size=train_size)
    epochs = EPOCHS[arch] if epochs is None else epochs
    config = {
        "name": f"{dataset}-{arch}",
        "dataset": dataset,
        "arch": arch,
        "seed": seed,
        "epochs": epochs,
        "limit": limit,
        **RECIPE,
        "split": split.sizes(),
        "version": 1,
        **runtime_key(device),
        "schedule": schedule,
    }
    dl = loaders(split, RECIPE["batch_size"], flat=arch == "mlp", seed=seed)

    def build() -> nn.Module:
        seed_everything(seed)
        return build_model(arch, split.image_shape)

    def train(model: nn.Module) -> dict:
        hist = fit(
            model,
            dl["train"],
            dl["val"],
            epochs=epochs,
            lr=RECIPE["lr"],
            scheduler=anneal(schedule, epochs),
            optimizer=RECIPE["optimizer"],
            device=device,
            progress=progress,
            desc=f"{arch} baseline",
        )
        return {"history": hist.to_dict(orient="list")}

    model, extras, hit = cached_model(config, build, train)
    return Baseline(model.eval(), split, pd.DataFrame(extras["history"]), config, hit)


# ---------------------------------------------------------------- a run's facts, for its Discussion


def interval_text(row: Mapping[str, Any]) -> str:
    """The paired 95% interval and McNemar p of a ``measure.compare`` row, as table context.

    Args:
        row: the model's row (delta_low_points, delta_high_points, p_mcnemar).

    Returns:
        e.g. "95% CI [-0.51, +0.18], McNemar p = 0.36" (paired; at most 50 characters, the
        width pandas shows).
    """
    low, high = float(row["delta_low_points"]), float(row["delta_high_points"])
    return f"95% CI [{low:+.2f}, {high:+.2f}], McNemar p = {float(row['p_mcnemar']):.2g}"


def verdict_reason(row: Mapping[str, Any]) -> str:
    """Where a ``measure.compare`` row's paired 95% interval lies, the reason for its verdict.

    Args:
        row: the model's row (delta_low_points, delta_high_points).

    Returns:
        "the paired 95% interval lies above zero", "... below zero" or "... contains zero".
    """
    low, high = float(row["delta_low_points"]), float(row["delta_high_points"])
    where = "lies above zero" if low > 0 else "lies below zero" if high < 0 else "contains zero"
    return f"the paired 95% interval {where}"


def above_chance(row: Mapping[str, Any], n_classes: int = 10) -> bool:
    """Whether an accuracy beats guessing beyond noise: its 95% interval starts above 1/classes.

    Args:
        row: a ``measure.compare`` row (accuracy_low).
        n_classes: number of classes (guessing scores 1 / n_classes).

    Returns:
        True when the lower end of the Wilson interval exceeds 1 / n_classes.
    """
    return bool(float(row["accuracy_low"]) > 1.0 / n_classes)


def summary(
    table: pd.DataFrame,
    macs: Mapping[str, int],
    n_test: int,
    baseline: str = "mlp",
    other: str = "lenet5",
) -> pd.DataFrame:
    """This run's facts about the two baselines, from their ``measure.compare`` table.

    Args:
        table: ``measure.compare`` of the two models (index: model name), ``baseline`` its baseline.
        macs: model name -> multiply-adds per image (``measure.count_macs``).
        n_test: number of test images.
        baseline: the row the other is compared with (the MLP).
        other: the other model (LeNet-5).

    Returns:
        A ``fact_table``: parameter, multiply-add and byte ratios, the accuracy change with its
        paired interval and verdict, the speed ratio per batch size, whether each model beats
        chance, and what one test image and one standard error weigh in points.
    """
    b, o = table.loc[baseline], table.loc[other]
    acc = float(b["accuracy"])
    rows = [
        (
            f"parameters, {baseline} / {other}",
            round(float(b["params"] / o["params"]), 2),
            "x",
            f"{int(b['params']):,} vs {int(o['params']):,}",
        ),
        (
            f"multiply-adds per image, {other} / {baseline}",
            round(macs[other] / macs[baseline], 2),
            "x",
            f"{macs[other]:,} vs {macs[baseline]:,}",
        ),
        (
            f"bytes on disk, {baseline} / {other}",
            round(float(o["size_ratio"]), 2),
            "x",
            f"{int(b['bytes']):,} vs {int(o['bytes']):,}",
        ),
        (
            f"accuracy change, {other} vs {baseline}",
            round(float(o["accuracy_delta_points"]), 2),
            "points",
            interval_text(o),
        ),
        (f"verdict, {other} vs {baseline}", str(o["verdict"]), "", verdict_reason(o)),
    ]
    for col in [c for c in table.columns if c.startswith("speedup_b")]:
        bs = col.removeprefix("speedup_b")
        rows.append(
            (
                f"speed of {other} / {baseline}, batch {bs}",
                round(float(o[col]), 2),
                "x",
                "above 1: faster; timed side by side",
            )
        )
    for name in (baseline, other):
        r = table.loc[name]
        low, high = float(r["accuracy_low"]), float(r["accuracy_high"])
        rows.append(
            (
                f"{name} above chance",
                above_chance(r),
                "",
                f"95% interval [{low:.4f}, {high:.4f}] vs 0.1",
            )
        )
    rows += [
        ("one test image", round(100 / n_test, 4), "points", f"{n_test:,} test images"),
        (
            f"standard error of {baseline}'s accuracy",
            round(100 * math.sqrt(acc * (1 - acc) / n_test), 2),
            "points",
            f"sqrt(p (1 - p) / n) at p = {acc:.4f}",
        ),
    ]
    return fact_table(rows)
