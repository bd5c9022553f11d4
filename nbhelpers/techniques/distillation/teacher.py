"""The teacher: its architecture, its training on the shifted views (cached; Adam with a cosine
decay, or Hinton et al.'s 2012 recipe of ``dropout_recipe``), and ``TeacherLogits``, which runs it
once over a training set and looks each batch up exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from nbhelpers.core.cache import TRAIN_THREADS, cached_model, runtime_key
from nbhelpers.core.data import loader
from nbhelpers.core.models import build_model
from nbhelpers.core.params import ParameterError, check_choice
from nbhelpers.core.pooling import fast_max_pool
from nbhelpers.core.train import Device, anneal, fit, module_device, seed_everything
from nbhelpers.techniques.distillation.dropout_recipe import (
    DampedMomentum,
    MomentumRamp,
    TeacherRecipe,
    max_norm_hook,
)

#: Teacher families: a wide LeNet-style CNN, or an MLP with dropout (Hinton et al.'s 1200-1200).
TEACHERS = ("cnn", "mlp")


class TeacherLogits:
    """The teacher's logits on a fixed set of inputs, computed once and looked up per batch.

    A batch is matched to the stored inputs by a random projection (a hash of each row), then
    checked for exact equality; rows not found are run through the teacher, so the result always
    equals ``teacher(x)`` in eval mode without gradients. Given the training ``loader`` (a
    ``data.loader`` over ``X``), a lookup first tries the rows of the loader's latest batch, which
    is the batch being trained on: one gather and one comparison instead of the search.

    The cache lives on the device of ``X``; the teacher runs on its own device, and each lookup
    returns the logits on the device of its batch.
    """

    def __init__(
        self,
        teacher: nn.Module,
        X: torch.Tensor,
        batch_size: int = 256,
        seed: int = 0,
        loader: DataLoader | None = None,
    ):
        """Run the teacher once over ``X`` (n, ...) and index the rows.

        Args:
            teacher: the trained teacher, on any device (put in eval mode).
            X: every input the student will train on; the cache is kept on its device.
            batch_size: rows per teacher call while precomputing.
            seed: seed of the projection (drawn on the CPU: the same on every device).
            loader: the training loader over ``X`` (``data.loader``: its sampler remembers the
                latest batch's row numbers), or None to search every batch.
        """
        self.sampler = getattr(loader, "sampler", None)
        if loader is not None and not hasattr(self.sampler, "last"):
            raise ParameterError(
                "loader", type(self.sampler).__name__, "a data.loader (its sampler is a LastBatch)"
            )
        self.teacher = teacher.eval()
        self.X = X.reshape(len(X), -1).contiguous()
        self.logits = torch.cat(
            [self._run(X[i : i + batch_size]) for i in range(0, len(X), batch_size)]
        )
        gen = torch.Generator().manual_seed(seed)
        self.proj = torch.randn(self.X.shape[1], generator=gen, dtype=torch.float64).to(X.device)
        keys = self.X.double() @ self.proj
        self.keys, self.order = torch.sort(keys)
        self.hits = self.misses = 0
        self.followed = 0  # batches found at the loader's latest indices

    @torch.no_grad()
    @fast_max_pool()  # PyTorch's results, faster on the CPU (nbhelpers.core.pooling)
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits of ``x``, computed on its device, returned on the cache's device."""
        return self.teacher(x.to(module_device(self.teacher))).float().to(self.X.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits of a batch ``x`` (n, ...), from the cache where the rows match exactly."""
        device, x = x.device, x.to(self.X.device)
        flat = x.reshape(len(x), -1)
        last = None if self.sampler is None else self.sampler.last
        if last is not None and len(last) == len(flat) > 0:
            idx = last.to(self.X.device)
            if idx.max() < len(self.X) and torch.equal(self.X.index_select(0, idx), flat):
                self.hits += len(idx)
                self.followed += 1
                return self.logits.index_select(0, idx).to(device)
        keys = flat.double() @ self.proj
        pos = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)
        lower = (pos - 1).clamp(min=0)
        pos = torch.where(
            (self.keys[lower] - keys).abs() < (self.keys[pos] - keys).abs(), lower, pos
        )
        idx = self.order[pos]
        ok = (self.X[idx] == flat).all(dim=1)
        out = self.logits[idx].clone()
        if not bool(ok.all()):
            out[~ok] = self._run(x[~ok])
        self.hits += int(ok.sum())
        self.misses += int((~ok).sum())
        return out.to(device)


def build_teacher(
    arch: str,
    image_shape: Sequence[int],
    fc: Sequence[int],
    channels: Sequence[int] = (20, 50),
    dropout: float = 0.0,
    recipe: TeacherRecipe | None = None,
) -> nn.Module:
    """An untrained teacher: a LeNet-style CNN with wider layers, or an MLP.

    Args:
        arch: "cnn" (conv ``channels[0]``, pool, conv ``channels[1]``, pool, fully connected ``fc``)
            or "mlp" (hidden layers ``fc``, with ``dropout`` after each).
        image_shape: (channels, height, width) of one input.
        fc: widths of the fully connected hidden layers.
        channels: the two convolutions' output channels (cnn only).
        dropout: dropout probability after each hidden layer (mlp only).
        recipe: its jitter and input dropout come first, as training-only layers of a
            Sequential (None, or neither set: the model as before, with the same parameter names).

    Returns:
        The freshly initialised model.
    """
    check_choice("TEACHER", arch, TEACHERS)
    if arch == "cnn":
        model = build_model("lenet5", image_shape, channels=tuple(channels), fc=tuple(fc))
    else:
        model = build_model("mlp", image_shape, hidden=tuple(fc), dropout=dropout)
    first = [] if recipe is None else recipe.input_layers()
    return nn.Sequential(*first, *model) if first else model


def quiet_loader(dl: DataLoader) -> DataLoader:
    """The same batches in the same order from a loader that draws its per-iteration seed from a
    generator of its own.

    A ``DataLoader`` without a generator draws that seed from torch's global generator each time
    it is iterated, which moves the dropout and jitter draws of a model trained meanwhile; scoring
    through this copy leaves them where they were.

    Args:
        dl: a loader whose sampler is not shuffled by the global generator (``data.loader``).

    Returns:
        A new ``DataLoader`` over the same dataset and sampler.
    """
    g = torch.Generator().manual_seed(0)
    if dl.batch_size is None:
        return DataLoader(dl.dataset, batch_size=None, sampler=dl.sampler, generator=g)
    return DataLoader(
        dl.dataset, batch_sampler=dl.batch_sampler, collate_fn=dl.collate_fn, generator=g
    )


def get_teacher(
    split_name: str,
    split_sizes: dict,
    views: torch.Tensor,
    labels: torch.Tensor,
    arch: str,
    fc: Sequence[int],
    channels: Sequence[int],
    dropout: float,
    epochs: int,
    seed: int,
    view_key: dict,
    device: Device = "cpu",
    lr: float = 1e-3,
    batch_size: int = 64,
    recipe: TeacherRecipe | None = None,
    val_loader: DataLoader | None = None,
    threads: int = TRAIN_THREADS,
) -> tuple[nn.Module, pd.DataFrame, bool]:
    """The teacher trained on the shifted views, from the cache or trained now.

    Args:
        split_name: the dataset name (part of the cache key).
        split_sizes: ``Split.sizes()`` (part of the cache key).
        views: (n, C, H, W) training views (``shifted_copies`` of the training images).
        labels: (n,) their labels.
        arch, fc, channels, dropout: the teacher (see ``build_teacher``).
        epochs: passes over the views.
        seed: seed of the initialisation, the shuffle and the dropout and jitter draws.
        view_key: what made the views (e.g. {"views": 10, "max_shift": 2, "seed": 0}), for the key.
        device: where to train if the cache misses.
        lr: the starting learning rate (Adam's, decayed by a cosine to 0; or the damped-momentum
            SGD's, decayed by ``recipe.lr_decay`` per epoch).
        batch_size: training batch size.
        recipe: optimizer, input jitter and dropout, max-norm (None: ``TeacherRecipe()``, Adam
            with a cosine decay and nothing else, as before).
        val_loader: validation images scored after every epoch (the history's learning curve,
            through ``quiet_loader``: the weights are the same with or without it), or None.
        threads: CPU threads to train on if the cache misses (part of the key; the default is
            the cache's ``TRAIN_THREADS``).

    Returns:
        (teacher on the CPU in eval mode, its training history, whether it came from the cache).
    """
    recipe = (recipe or TeacherRecipe()).check()
    config = {
        "name": f"{split_name}-teacher-{arch}",
        "arch": arch,
        "fc": list(fc),
        "channels": list(channels),
        "dropout": dropout,
        "epochs": epochs,
        "seed": seed,
        "lr": lr,
        "batch_size": batch_size,
        "split": split_sizes,
        "views": view_key,
        "version": 1,
        **runtime_key(device),
    }
    if recipe.key():  # the default teacher keeps the key it always had
        config["recipe"] = recipe.key()
    if val_loader is not None:
        config["val_curve"] = True
    shape = tuple(views.shape[1:])

    def build() -> nn.Module:
        seed_everything(seed)
        return build_teacher(arch, shape, fc, channels, dropout, recipe)

    def train(model: nn.Module) -> dict:
        dl = loader(views.numpy(), labels.numpy(), batch_size, shuffle=True, seed=seed)
        val = None if val_loader is None else quiet_loader(val_loader)
        hist = train_teacher(model, dl, epochs, lr, recipe, val, device)
        return {"history": hist.to_dict(orient="list")}

    model, extras, hit = cached_model(config, build, train, threads=threads)
    return model.eval(), pd.DataFrame(extras["history"]), hit


def train_teacher(
    model: nn.Module,
    train_loader: DataLoader,
    epochs: int,
    lr: float,
    recipe: TeacherRecipe,
    val_loader: DataLoader | None = None,
    device: Device = "cpu",
) -> pd.DataFrame:
    """Train a teacher in place with a recipe's optimizer, schedule and max-norm constraint.

    Args:
        model: the teacher (``build_teacher``: its input jitter and dropout are its own layers).
        train_loader: the training batches.
        epochs: passes over them.
        lr: the starting learning rate.
        recipe: "adam" decays the rate by a cosine to 0 over ``epochs``; "sgd_momentum" uses
            ``DampedMomentum`` with ``MomentumRamp``; a ``max_norm`` is kept after every step.
        val_loader: scored after every epoch, or None.
        device: where to train.

    Returns:
        ``train.fit``'s history (one row per epoch).
    """
    model.to(device)
    if recipe.optimizer == "sgd_momentum":
        optimizer: str | torch.optim.Optimizer = DampedMomentum(model.parameters(), lr)
        schedule = lambda opt: MomentumRamp(opt, recipe.momentum_ramp, recipe.lr_decay)  # noqa: E731
    else:
        optimizer, schedule = "adam", anneal("cosine", epochs)
    return fit(
        model,
        train_loader,
        val_loader,
        epochs=epochs,
        lr=lr,
        optimizer=optimizer,
        scheduler=schedule,
        after_step=max_norm_hook(recipe.max_norm),
        device=device,
        progress=False,
    )
