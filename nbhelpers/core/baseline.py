"""The shared trained baselines every notebook compares against, trained once and cached."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from torch import nn

from nbhelpers.core.cache import cached_model, runtime_key
from nbhelpers.core.data import Split, load_split, loaders
from nbhelpers.core.models import build_model
from nbhelpers.core.params import check_choice
from nbhelpers.core.train import SCHEDULES, anneal, fit, seed_everything

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
