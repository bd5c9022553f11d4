"""Knowledge distillation: Hinton's soft-target loss, logit matching, a teacher-logit cache, a
cached teacher trained on shifted views, and ``StudentLab``, which trains and scores students.

Convention for ``alpha`` (both losses): the weight of the teacher term, so that
``loss = (1 - alpha) * CE(student, labels) + alpha * teacher_term``; ``alpha = 0`` is plain
cross-entropy (no teacher), ``alpha = 1`` learns from the teacher alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from nbhelpers.core.cache import cached_model, runtime_key
from nbhelpers.core.data import loader
from nbhelpers.core.models import build_model
from nbhelpers.core.params import ParameterError, check_choice, check_float, check_int
from nbhelpers.core.pooling import fast_max_pool
from nbhelpers.core.train import Device, LossFn, fit, module_device, seed_everything
from nbhelpers.measure import accuracy as measure_accuracy
from nbhelpers.measure import correct as measure_correct
from nbhelpers.measure.facts import fact_table
from nbhelpers.measure.stats import seed_summary, seeds_paired_difference
from nbhelpers.measure.targets import verdict_text

#: The distillation losses: Hinton et al. (2015) soft targets, Ba & Caruana (2014) logit matching.
LOSSES = ("hinton", "logits")
#: Teacher families: a wide LeNet-style CNN, or an MLP with dropout (Hinton et al.'s 1200-1200).
TEACHERS = ("cnn", "mlp")
#: What a student can train on: the training images, their shifted views, or random images.
TRAIN_SETS = ("images", "views", "random")


def check_temperature(name: str, value: Any) -> float:
    """Check a softmax temperature: a finite number greater than zero.

    Args:
        name: parameter name.
        value: the given value.

    Returns:
        The temperature as a float.
    """
    return check_float(name, value, 0.0, None, low_inclusive=False)


def check_alpha(name: str, value: Any) -> float:
    """Check a mixing weight ``alpha`` in [0, 1] (0: labels only, 1: teacher only).

    Args:
        name: parameter name.
        value: the given value.

    Returns:
        Alpha as a float.
    """
    return check_float(name, value, 0.0, 1.0)


def soft_targets(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax of ``logits / temperature``: the softened class probabilities ("dark knowledge").

    Args:
        logits: (n, classes).
        temperature: T > 0; larger T spreads probability onto the wrong classes.

    Returns:
        (n, classes) probabilities, each row summing to 1.
    """
    return F.softmax(logits / check_temperature("temperature", temperature), dim=1)


def hinton_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    y: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """Hinton et al. (2015): ``(1-alpha) CE(s, y) + alpha T^2 KL(softmax(t/T) || softmax(s/T))``.

    The KL divergence is summed over classes and averaged over the batch; ``T^2`` keeps the
    gradient of the soft term on the same scale for every temperature.

    Args:
        student_logits: (n, classes), with gradients.
        teacher_logits: (n, classes), constants.
        y: (n,) labels.
        temperature: T > 0.
        alpha: weight of the soft term in [0, 1].

    Returns:
        The scalar loss.
    """
    T = check_temperature("temperature", temperature)
    alpha = check_alpha("alpha", alpha)
    ce = F.cross_entropy(student_logits, y)
    if alpha == 0:
        return ce
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    p_t = F.softmax(teacher_logits.detach() / T, dim=1)
    kl = F.kl_div(log_p_s, p_t, reduction="batchmean")
    return (1 - alpha) * ce + alpha * T * T * kl


def logit_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, alpha: float = 1.0
) -> torch.Tensor:
    """Ba & Caruana (2014) logit matching, mixed with labels: ``(1-alpha) CE + alpha MSE(s, t)``.

    The squared error is averaged over all batch entries and classes (``F.mse_loss``);
    ``alpha = 1`` is the original method (regression on the teacher's logits, no labels).

    Args:
        student_logits: (n, classes), with gradients.
        teacher_logits: (n, classes), constants.
        y: (n,) labels.
        alpha: weight of the logit term in [0, 1].

    Returns:
        The scalar loss.
    """
    alpha = check_alpha("alpha", alpha)
    ce = F.cross_entropy(student_logits, y)
    if alpha == 0:
        return ce
    return (1 - alpha) * ce + alpha * F.mse_loss(student_logits, teacher_logits.detach())


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    y: torch.Tensor,
    loss: str = "hinton",
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """The chosen distillation loss (``"hinton"`` or ``"logits"``; the latter ignores the
    temperature).

    Args:
        student_logits: (n, classes).
        teacher_logits: (n, classes).
        y: (n,) labels.
        loss: one of ``LOSSES``.
        temperature: T > 0 for ``"hinton"``.
        alpha: weight of the teacher term in [0, 1].

    Returns:
        The scalar loss.
    """
    check_choice("LOSS", loss, LOSSES)
    if loss == "hinton":
        return hinton_loss(student_logits, teacher_logits, y, temperature, alpha)
    return logit_loss(student_logits, teacher_logits, y, alpha)


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


def make_loss_fn(
    teacher_logits: TeacherLogits | nn.Module,
    loss: str = "hinton",
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> LossFn:
    """A ``loss_fn(logits, y, x)`` for ``train.fit`` that distills from a teacher.

    Args:
        teacher_logits: a ``TeacherLogits`` cache, or the teacher module itself (run under
            no_grad on its own device; its logits come back on the device of the batch).
        loss: one of ``LOSSES``.
        temperature: T > 0 (Hinton's loss).
        alpha: weight of the teacher term in [0, 1].

    Returns:
        The loss function.
    """
    check_choice("LOSS", loss, LOSSES)
    check_temperature("TEMPERATURE", temperature)
    check_alpha("ALPHA", alpha)
    if isinstance(teacher_logits, nn.Module):
        teacher = teacher_logits.eval()

        def lookup(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return teacher(x.to(module_device(teacher))).to(x.device)
    else:
        lookup = teacher_logits

    def loss_fn(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return distillation_loss(logits, lookup(x), y, loss, temperature, alpha)

    return loss_fn


def train_student(
    build,
    seed: int,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    epochs: int,
    loss_fn: LossFn | None = None,
    lr: float = 1e-3,
    device: Device = "cpu",
    after_step: Callable[[nn.Module], None] | None = None,
) -> tuple[nn.Module, pd.DataFrame]:
    """Seed, build and train one student with ``train.fit`` (cross-entropy when ``loss_fn`` is
    None).

    Args:
        build: makes the untrained student.
        seed: seeds the initialisation and the shuffle order (through the loader's generator).
        train_loader: training batches (reseeded with ``seed``).
        val_loader: validation batches, or None.
        epochs: training epochs.
        loss_fn: ``f(logits, y, x)``; None is plain cross-entropy.
        lr: Adam learning rate.
        device: where to train.
        after_step: ``f(model)`` after every optimizer step (``train.fit``'s hook).

    Returns:
        (trained student on the CPU in eval mode, its history).
    """
    seed_everything(seed)
    model = build()
    if getattr(train_loader, "generator", None) is not None:
        train_loader.generator.manual_seed(seed)
    hist = fit(
        model,
        train_loader,
        val_loader,
        epochs=epochs,
        lr=lr,
        loss_fn=loss_fn,
        after_step=after_step,
        device=device,
        progress=False,
    )
    return model.cpu().eval(), hist


def shifted_copies(X: torch.Tensor, copies: int, max_shift: int = 2, seed: int = 0) -> torch.Tensor:
    """Images followed by ``copies`` randomly shifted copies (zero fill), a transfer set for
    distillation.

    Args:
        X: images (n, C, H, W).
        copies: shifted copies to append (0 returns ``X``).
        max_shift: largest shift in pixels along each axis.
        seed: seed of the shifts (drawn on the CPU: the same shifts on every device).

    Returns:
        ((copies + 1) * n, C, H, W) on the device of ``X``: the originals first, then each copy.
    """
    g = torch.Generator().manual_seed(seed)
    n, _, H, W = X.shape
    m = max_shift
    padded = F.pad(X, (m, m, m, m))
    out = [X]
    for _ in range(copies):
        dy = torch.randint(-m, m + 1, (n,), generator=g).to(X.device)
        dx = torch.randint(-m, m + 1, (n,), generator=g).to(X.device)
        copy = torch.empty_like(X)
        for sy in range(-m, m + 1):
            for sx in range(-m, m + 1):
                sel = (dy == sy) & (dx == sx)
                copy[sel] = padded[sel, :, m - sy : m - sy + H, m - sx : m - sx + W]
        out.append(copy)
    return torch.cat(out)


def gap_closed(scratch: float, distilled: float, teacher: float) -> float:
    """Share of the accuracy gap between a from-scratch student and the teacher that distillation
    closes.

    Args:
        scratch: accuracy of the student trained on labels only.
        distilled: accuracy of the distilled student.
        teacher: accuracy of the teacher.

    Returns:
        ``(distilled - scratch) / (teacher - scratch)``; NaN when the teacher is not better.
    """
    gap = teacher - scratch
    return (distilled - scratch) / gap if gap > 0 else float("nan")


def gap_interval(
    low: float, high: float, scratch: float, teacher: float
) -> tuple[float, float] | None:
    """The interval of ``gap_closed`` from the paired interval of distilled - scratch (points).

    The teacher-to-scratch gap is taken as exact, so this shows the uncertainty of the numerator.

    Args:
        low, high: the paired 95% interval of distilled - scratch, in percentage points.
        scratch: the from-scratch accuracy (fraction).
        teacher: the teacher's accuracy (fraction).

    Returns:
        (low, high) as shares of the gap, or None when the teacher is not better.
    """
    gap = teacher - scratch
    return (low / 100 / gap, high / 100 / gap) if gap > 0 else None


def teacher_table(
    logits: torch.Tensor, y: torch.Tensor, temperatures: Sequence[float]
) -> pd.DataFrame:
    """The teacher's soft targets of a few samples at several temperatures, one row per (sample, T).

    Args:
        logits: (k, classes) teacher logits of the chosen samples.
        y: (k,) their labels.
        temperatures: the temperatures to show.

    Returns:
        Columns sample, label, T and one column per class (probabilities).
    """
    rows = []
    for i in range(len(y)):
        for T in temperatures:
            p = soft_targets(logits[i : i + 1], T)[0]
            rows.append(
                {
                    "sample": i,
                    "label": int(y[i]),
                    "T": T,
                    **{str(c): float(v) for c, v in enumerate(p)},
                }
            )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the teacher and the transfer data


def build_teacher(
    arch: str,
    image_shape: Sequence[int],
    fc: Sequence[int],
    channels: Sequence[int] = (20, 50),
    dropout: float = 0.0,
) -> nn.Module:
    """An untrained teacher: a LeNet-style CNN with wider layers, or an MLP.

    Args:
        arch: "cnn" (conv ``channels[0]``, pool, conv ``channels[1]``, pool, fully connected ``fc``)
            or "mlp" (hidden layers ``fc``, with ``dropout`` after each).
        image_shape: (channels, height, width) of one input.
        fc: widths of the fully connected hidden layers.
        channels: the two convolutions' output channels (cnn only).
        dropout: dropout probability after each hidden layer (mlp only).

    Returns:
        The freshly initialised model.
    """
    check_choice("TEACHER", arch, TEACHERS)
    if arch == "cnn":
        return build_model("lenet5", image_shape, channels=tuple(channels), fc=tuple(fc))
    return build_model("mlp", image_shape, hidden=tuple(fc), dropout=dropout)


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
) -> tuple[nn.Module, pd.DataFrame, bool]:
    """The teacher trained on the shifted views (Adam, cosine decay to 0), from the cache or
    trained now.

    Args:
        split_name: the dataset name (part of the cache key).
        split_sizes: ``Split.sizes()`` (part of the cache key).
        views: (n, C, H, W) training views (``shifted_copies`` of the training images).
        labels: (n,) their labels.
        arch, fc, channels, dropout: the teacher (see ``build_teacher``).
        epochs: passes over the views.
        seed: seed of the initialisation and the shuffle.
        view_key: what made the views (e.g. {"views": 10, "max_shift": 2, "seed": 0}), for the key.
        device: where to train if the cache misses.
        lr: Adam learning rate at the start of the cosine schedule.
        batch_size: training batch size.

    Returns:
        (teacher on the CPU in eval mode, its training history, whether it came from the cache).
    """
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
    shape = tuple(views.shape[1:])

    def build() -> nn.Module:
        seed_everything(seed)
        return build_teacher(arch, shape, fc, channels, dropout)

    def train(model: nn.Module) -> dict:
        dl = loader(views.numpy(), labels.numpy(), batch_size, shuffle=True, seed=seed)
        cosine = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)  # noqa: E731
        hist = fit(
            model, dl, None, epochs=epochs, lr=lr, scheduler=cosine, device=device, progress=False
        )
        return {"history": hist.to_dict(orient="list")}

    model, extras, hit = cached_model(config, build, train)
    return model.eval(), pd.DataFrame(extras["history"]), hit


def random_images(n: int, shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """Images of independent uniform pixels in [0, 1]: inputs that look nothing like the task.

    Args:
        n: how many.
        shape: (C, H, W) of one image.
        seed: seed of the pixels (drawn on the CPU).

    Returns:
        (n, C, H, W) float32.
    """
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ FitNets hints


def penultimate(model: nn.Sequential) -> nn.Sequential:
    """The layers of a sequential classifier before its last ``Linear``: its last hidden
    representation.

    Args:
        model: an ``nn.Sequential`` ending in a ``Linear`` (the MLP, LeNet-5 and the CNN teacher).

    Returns:
        A Sequential sharing those layers (training it trains the model).
    """
    layers = list(model)
    last = max((i for i, m in enumerate(layers) if isinstance(m, nn.Linear)), default=-1)
    if last < 1:
        raise ParameterError(
            "model",
            type(model).__name__,
            "an nn.Sequential with hidden layers before a last Linear",
        )
    return nn.Sequential(*layers[:last])


def hint_stage(
    student: nn.Module,
    teacher: nn.Module,
    X: torch.Tensor,
    train_loader: DataLoader,
    epochs: int,
    lr: float = 1e-3,
    device: Device = "cpu",
) -> pd.DataFrame:
    """FitNets stage 1 (Romero et al. 2015): train the student's hidden layers to predict the
    teacher's.

    A linear regressor maps the student's last hidden layer to the teacher's; the student's layers
    below it and the regressor minimise ``MSE(regressor(h_s(x)), h_t(x))`` over ``epochs``. Stage 2
    is ordinary distillation of the whole student, starting from these layers.

    Args:
        student: the student (``nn.Sequential``), trained in place.
        teacher: the teacher (``nn.Sequential``, eval mode).
        X: every input of ``train_loader`` (the teacher's hidden outputs are computed once over
            them).
        train_loader: the training batches.
        epochs: passes of stage 1.
        lr: Adam learning rate.
        device: where to train.

    Returns:
        The history of stage 1 (its ``train_loss`` is the hint MSE).
    """
    trunk_t, trunk_s = penultimate(teacher), penultimate(student)
    hints = TeacherLogits(trunk_t, X, loader=train_loader)  # the teacher's hidden outputs, once
    with torch.no_grad():
        width_s = trunk_s(X[:1].to(module_device(student))).shape[1]
    regressor = nn.Linear(width_s, hints.logits.shape[1])
    model = nn.Sequential(trunk_s, regressor)

    def loss_fn(out: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, hints(x))

    return fit(
        model,
        train_loader,
        None,
        epochs=epochs,
        lr=lr,
        loss_fn=loss_fn,
        device=device,
        progress=False,
    )


# ------------------------------------------------------------------ students, trained and scored


class StudentLab:
    """Trains students on named training sets at one budget of images seen, and scores them.

    Every student sees ``epochs * len(images)`` training images, whatever its training set: a set
    ``k`` times larger is passed over ``epochs / k`` times, so students on the views or on random
    images take as many optimizer steps as those on the training images. Each run is keyed by
    (hidden, set, loss, T, alpha, seed); asking for the same run again under another name reuses it.

    Every student learns at a constant rate, so a run with a shorter budget is the first part of a
    longer run of the same student and seed: with ``snapshots`` the lab keeps each run's weights
    after those budgets, and a later request for the shorter run is that state, not a new run.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
        teacher: nn.Module,
        epochs: int,
        val_loader: DataLoader,
        test_loader: DataLoader,
        batch_size: int = 64,
        lr: float = 1e-3,
        device: Device = "cpu",
        snapshots: Sequence[int] = (),
    ):
        """Prepare the training sets and run the teacher once over each.

        Args:
            image_shape: (C, H, W) of one image.
            sets: name -> (images (n, C, H, W), labels (n,)); "images" is required (the budget's
                unit), and every set's size must be a whole multiple of its size.
            teacher: the trained teacher (its logits are computed once per set).
            epochs: the budget, in passes over the "images" set.
            val_loader, test_loader: flat-or-image loaders for scoring (MLP students flatten).
            batch_size: training batch size.
            lr: Adam learning rate of every student.
            device: where students train.
            snapshots: shorter budgets, in passes over the "images" set, whose states every longer
                run keeps (bit for bit the weights a run with that budget ends with).
        """
        if "images" not in sets:
            raise ParameterError("sets", sorted(sets), "a mapping with an 'images' entry")
        self.n_images = len(sets["images"][1])
        self.sizes = {name: len(X) for name, (X, _) in sets.items()}
        for name, size in self.sizes.items():
            if size % self.n_images:
                raise ParameterError(
                    "sets", name, f"a set whose size is a multiple of {self.n_images} (the images)"
                )
        self.epochs = epochs
        self.passes = {name: self.passes_for(name, epochs) for name in sets}
        self.snapshots = sorted({check_int("snapshots", e, minimum=1) for e in snapshots})
        self._snapped: dict[tuple, tuple[nn.Module, float]] = {}
        self.image_shape, self.lr, self.device = tuple(image_shape), lr, device
        self.loaders = {
            k: loader(X.numpy(), y.numpy(), batch_size, shuffle=True) for k, (X, y) in sets.items()
        }
        self.sets = {k: X for k, (X, _) in sets.items()}
        self.teacher = teacher.eval()
        self.logits = {
            k: TeacherLogits(teacher, X, loader=self.loaders[k]) for k, (X, _) in sets.items()
        }
        self.n_classes = int(
            self.logits["images"].logits.shape[1]
        )  # students predict the teacher's classes
        self.val_loader, self.test_loader = val_loader, test_loader
        self.rows: list[dict] = []
        self._done: dict[tuple, tuple[nn.Module, dict, np.ndarray]] = {}
        self._names: dict[tuple[str, int], tuple] = {}

    def passes_for(self, data: str, epochs: int) -> int:
        """Passes over set ``data`` that show as many images as ``epochs`` passes over the images.

        Args:
            data: a set's name.
            epochs: the budget in passes over the training images.

        Returns:
            The whole number of passes; a budget that is no whole number of them is an error.
        """
        ratio = self.sizes[data] // self.n_images
        if epochs < 1 or epochs % ratio:
            raise ParameterError(
                "EPOCHS",
                epochs,
                f"a positive multiple of {ratio} (the size of set {data!r} over "
                "the training images), so every student sees as many images",
            )
        return epochs // ratio

    def train(
        self,
        name: str,
        hidden: Sequence[int],
        data: str,
        loss: str | None = None,
        temperature: float = 1.0,
        alpha: float = 0.0,
        seed: int = 0,
        epochs: int | None = None,
        hint_epochs: int = 0,
    ) -> dict:
        """Train one student (``loss`` None: cross-entropy on the labels) and score it.

        Args:
            name: the student's name in the tables (several seeds share a name).
            hidden: hidden widths of the student MLP.
            data: the training set, one of the names given to the lab.
            loss: None (labels only), "hinton" or "logits".
            temperature: T of Hinton's loss.
            alpha: weight of the teacher term (ignored without a loss).
            seed: seeds the initialisation and the shuffle.
            epochs: the budget in passes over the training images (None: the lab's).
            hint_epochs: FitNets: the first ``hint_epochs`` of the budget train the student's hidden
                layers on the teacher's (``hint_stage``), the rest distil as usual (0: no hint).

        Returns:
            Its row: name, hidden, data, loss, T, alpha, seed, passes, val and test accuracy,
            seconds.
        """
        check_choice("data", data, sorted(self.loaders))
        if loss is not None:
            check_choice("LOSS", loss, LOSSES)
        passes = self.passes_for(data, self.epochs if epochs is None else epochs)
        hint = self.passes_for(data, hint_epochs) if hint_epochs else 0
        if hint >= passes:
            raise ParameterError(
                "HINT_EPOCHS",
                hint_epochs,
                f"fewer than the budget's {passes * self.sizes[data] // self.n_images}",
            )
        key = (
            tuple(int(h) for h in hidden),
            data,
            loss,
            float(temperature),
            float(alpha),
            int(seed),
            passes,
            hint,
        )
        if key not in self._done:
            loss_fn = (
                None if loss is None else make_loss_fn(self.logits[data], loss, temperature, alpha)
            )

            def build() -> nn.Module:
                return build_model("mlp", self.image_shape, self.n_classes, hidden=list(hidden))

            if hint:
                seed_everything(seed)
                first = build()
                self.loaders[data].generator.manual_seed(seed)
                hint_stage(
                    first,
                    self.teacher,
                    self.sets[data],
                    self.loaders[data],
                    hint,
                    self.lr,
                    self.device,
                )
                build = lambda: first  # noqa: E731  (stage 2 starts from the hinted layers)
            if key in self._snapped:  # the first part of a longer run, kept on the way
                model, seconds = self._snapped.pop(key)
            else:
                model, seconds = self._run(key, build, loss_fn)
            correct = measure_correct(model, self.test_loader)
            row = {
                "hidden": str(list(hidden)),
                "data": data,
                "loss": loss or "labels",
                "T": float(temperature),
                "alpha": float(alpha) if loss else 0.0,
                "seed": int(seed),
                "passes": passes,
                "hint_passes": hint,
                "val_accuracy": measure_accuracy(model, self.val_loader),
                "test_accuracy": float(correct.mean()),
                "train_seconds": seconds,
            }
            self._done[key] = (model, row, correct)
        row = {"student": name, **self._done[key][1]}
        self.rows.append(row)
        self._names[(name, int(seed))] = key
        return row

    def _run(self, key: tuple, build: Callable[[], nn.Module], loss_fn: LossFn | None) -> tuple:
        """Train the run of ``key``, keeping the states of the shorter snapshot budgets on the way.

        Returns:
            (trained student, training seconds).
        """
        data, seed, passes, hint = key[1], key[5], key[6], key[7]
        steps = len(self.loaders[data])
        keep = {}  # optimizer steps -> key of the shorter run that ends there
        ratio = self.sizes[data] // self.n_images  # the set's size in training-image sets
        for e in [] if hint else self.snapshots:
            short = (*key[:6], e // ratio, 0)
            if e % ratio == 0 and e // ratio < passes and short not in self._done:
                keep[e // ratio * steps] = short
        states, count = {}, [0]

        def after_step(model: nn.Module) -> None:
            count[0] += 1
            if count[0] in keep:
                states[keep[count[0]]] = copy.deepcopy(model).cpu().eval()

        model, hist = train_student(
            build,
            seed,
            self.loaders[data],
            None,
            passes - hint,
            loss_fn,
            self.lr,
            self.device,
            after_step=after_step if keep else None,
        )
        seconds = hist["epoch_seconds"].to_numpy()
        for k, m in states.items():
            self._snapped[k] = (m, float(seconds[: k[6]].sum()))
        return model, float(seconds.sum())

    @property
    def runs(self) -> pd.DataFrame:
        """One row per trained (or reused) student and seed."""
        return pd.DataFrame(self.rows)

    def model(self, name: str, seed: int) -> nn.Module:
        """The trained student ``name`` of ``seed`` (on the CPU, eval mode)."""
        return self._done[self._names[(name, int(seed))]][0]

    def correct(self, name: str) -> np.ndarray:
        """(seeds, test images) boolean matrix of student ``name``, seeds in increasing order."""
        seeds = sorted(s for (n, s) in self._names if n == name)
        if not seeds:
            raise ParameterError(
                "name", name, f"a trained student: {sorted({n for n, _ in self._names})}"
            )
        return np.stack([self._done[self._names[(name, s)]][2] for s in seeds])

    def summary(self, names: Sequence[str] | None = None) -> pd.DataFrame:
        """Test accuracy per student: mean, sd and count over seeds, with its validation mean.

        Args:
            names: students to show (None: all, in order of first training).

        Returns:
            Index student; columns hidden, data, loss, T, alpha, mean, std, seeds, val_mean.
        """
        runs = self.runs
        names = list(dict.fromkeys(runs["student"])) if names is None else list(names)
        rows = []
        for n in names:
            r = runs[runs["student"] == n].drop_duplicates("seed")
            s = seed_summary(r["test_accuracy"].tolist())
            first = r.iloc[0]
            rows.append(
                {
                    "student": n,
                    "hidden": first["hidden"],
                    "data": first["data"],
                    "loss": first["loss"],
                    "T": first["T"],
                    "alpha": first["alpha"],
                    "mean": s.mean,
                    "std": s.std,
                    "seeds": s.n,
                    "val_mean": float(r["val_accuracy"].mean()),
                }
            )
        return pd.DataFrame(rows).set_index("student")

    def compare(self, pairs: Sequence[tuple[str, str]]) -> pd.DataFrame:
        """Each (student, reference) pair on the same test images, over their common seeds.

        Args:
            pairs: (student, reference) names.

        Returns:
            One row per pair: comparison, difference (points, mean over seeds), low, high (95%
            bootstrap interval over the test images), seed_std, seeds, verdict.
        """
        rows = []
        for b, a in pairs:
            d = seeds_paired_difference(self.correct(a), self.correct(b))
            rows.append(
                {
                    "comparison": f"{b} - {a}",
                    "difference": d["difference"],
                    "low": d["low"],
                    "high": d["high"],
                    "seed_std": d["seed_std"],
                    "seeds": d["seeds"],
                    "verdict": d["verdict"],
                }
            )
        return pd.DataFrame(rows).set_index("comparison")


def check_budget(epochs: int, views: int, name: str = "EPOCHS") -> int:
    """Check a student budget: whole passes over the views, so every student sees as many images.

    Args:
        epochs: passes over the training images.
        views: ``VIEWS``, views per training image (the original and its shifted copies).
        name: the parameter's name, for the error.

    Returns:
        The passes over the views.
    """
    check_int(name, epochs, minimum=1)
    if epochs % views:
        raise ParameterError(
            name,
            epochs,
            f"a multiple of VIEWS = {views}, so that students on the "
            "views see as many images as those on the training images",
        )
    return epochs // views


def summary(
    teacher_accuracy: float,
    params: Mapping[str, int],
    chosen: Mapping[str, Any],
    students: pd.DataFrame,
    pairs: pd.DataFrame,
    targets: Sequence[dict],
    n_test: int,
) -> pd.DataFrame:
    """This run's facts for the discussion of notebook 07 to point at by name.

    Args:
        teacher_accuracy: the teacher's test accuracy.
        params: parameters of "teacher", "student" and, if trained, "small student".
        chosen: the chosen setting, {"loss", "T", "alpha"}.
        students: ``StudentLab.summary()`` (sweep entries, whose names start with "sweep", are
            skipped).
        pairs: ``StudentLab.compare`` rows, index "student - reference".
        targets: the notebook's targets (gap closed first).
        n_test: test images (one image is ``100 / n_test`` points).

    Returns:
        A ``facts.fact_table`` (value, unit, context), 4 significant digits; "gap closed: target
        met" is the target's verdict ("yes", "NO", with "(within noise)" when its interval spans
        the goal).
    """
    rows = [
        ("teacher: test accuracy", teacher_accuracy, "", "one model"),
        (
            "teacher / student parameters",
            params["teacher"] / params["student"],
            "x",
            f"{params['teacher']:,} / {params['student']:,}",
        ),
    ]
    if "small student" in params:
        rows.append(
            (
                "teacher / small student parameters",
                params["teacher"] / params["small student"],
                "x",
                f"{params['teacher']:,} / {params['small student']:,}",
            )
        )
    rows.append(
        (
            "chosen setting",
            f"{chosen['loss']} T={chosen['T']:g} alpha={chosen['alpha']:g}",
            "",
            "best validation accuracy of the sweep",
        )
    )
    for name, r in students.iterrows():
        if not str(name).startswith("sweep"):
            sd = "" if r["seeds"] < 2 else f", sd {r['std']:.2g}"
            rows.append(
                (f"{name}: test accuracy", r["mean"], "", f"mean of {r['seeds']} seed(s){sd}")
            )
    for name, r in pairs.iterrows():
        rows.append(
            (name, r["difference"], "points", f"[{r['low']:.3g}, {r['high']:.3g}]: {r['verdict']}")
        )
    g = targets[0]
    rows += [
        (
            "gap closed",
            g["measured"],
            "",
            f"[{g['low']:.3g}, {g['high']:.3g}]; goal >= {g['threshold']:g}",
        ),
        (
            "gap closed: target met",
            verdict_text(g),
            "",
            f"lesson's goal >= {g['threshold']:g}; interval: row gap closed",
        ),
    ]
    for plain, distilled in (("plain", "distilled on views"), ("small plain", "small distilled")):
        if plain in students.index and distilled in students.index:
            closed = gap_closed(
                students.loc[plain, "mean"], students.loc[distilled, "mean"], teacher_accuracy
            )
            rows.append((f"{distilled}: gap closed", closed, "", f"vs {plain}, means over seeds"))
    rows.append(("one test image", 100.0 / n_test, "points", f"of {n_test:,} test images"))
    return fact_table(rows, digits=4)
