"""Students, trained and scored: ``train_student`` (one seeded run of ``train.fit``), ``StudentLab``
(students on named training sets at one budget of images seen, with their tables and paired
comparisons), the budget check, and the share of the teacher gap a student closes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from nbhelpers.core.data import loader
from nbhelpers.core.models import build_model
from nbhelpers.core.params import ParameterError, check_choice, check_int
from nbhelpers.core.train import SCHEDULES, Device, LossFn, anneal, fit, seed_everything
from nbhelpers.measure import accuracy as measure_accuracy
from nbhelpers.measure import correct as measure_correct
from nbhelpers.measure.stats import seed_summary, seeds_paired_difference
from nbhelpers.techniques.distillation.hints import hint_stage
from nbhelpers.techniques.distillation.losses import LOSSES, make_loss_fn
from nbhelpers.techniques.distillation.teacher import TeacherLogits, quiet_loader

#: What a student can train on: the training images, their shifted views, or random images.
TRAIN_SETS = ("images", "views", "random")


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
    schedule: str = "constant",
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
        schedule: the rate over the run, "constant" or "cosine" (to 0 over ``epochs``).

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
        scheduler=anneal(schedule, epochs),
        after_step=after_step,
        device=device,
        progress=False,
    )
    return model.cpu().eval(), hist


class StudentLab:
    """Trains students on named training sets at one budget of images seen, and scores them.

    Every student sees ``epochs * len(images)`` training images, whatever its training set: a set
    ``k`` times larger is passed over ``epochs / k`` times, so students on the views or on random
    images take as many optimizer steps as those on the training images. Each run is keyed by
    (hidden, set, loss, T, alpha, seed); asking for the same run again under another name reuses it.

    At a constant rate a run with a shorter budget is the first part of a longer run of the same
    student and seed: with ``snapshots`` the lab keeps each run's weights after those budgets, and
    a later request for the shorter run is that state, not a new run. With ``schedule="cosine"``
    the rate depends on the run's length, so every budget is its own run and no snapshot is kept.
    With ``curves`` every run scores the validation images after each epoch (``curves()``).
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
        schedule: str = "constant",
        curves: bool = False,
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
                run keeps (bit for bit the weights a run with that budget ends with; constant
                schedule only).
            schedule: every student's rate over its run, "constant" or "cosine".
            curves: score ``val_loader`` after every epoch of every run (the weights are the same).
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
        self.schedule = check_choice("STUDENT_SCHEDULE", schedule, SCHEDULES)
        self.curves_on = bool(curves)
        self._histories: dict[tuple, pd.DataFrame] = {}
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
        key = self._run_key(hidden, data, loss, temperature, alpha, seed, epochs, hint_epochs)
        if key not in self._done:
            self._done[key] = self._train_and_score(key)
        row = {"student": name, **self._done[key][1]}
        self.rows.append(row)
        self._names[(name, int(seed))] = key
        return row

    def _run_key(
        self,
        hidden: Sequence[int],
        data: str,
        loss: str | None,
        temperature: float,
        alpha: float,
        seed: int,
        epochs: int | None,
        hint_epochs: int,
    ) -> tuple:
        """Check one run's settings and return its key: (hidden, data, loss, T, alpha, seed,
        passes over ``data``, hint passes)."""
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
        return (
            tuple(int(h) for h in hidden),
            data,
            loss,
            float(temperature),
            float(alpha),
            int(seed),
            passes,
            hint,
        )

    def _train_and_score(self, key: tuple) -> tuple[nn.Module, dict, np.ndarray]:
        """Train the run of ``key`` (or take its snapshot) and score it on the validation and test
        images.

        Returns:
            (trained student, its row without the name, its test hits).
        """
        hidden, data, loss, temperature, alpha, seed, passes, hint = key
        loss_fn = (
            None if loss is None else make_loss_fn(self.logits[data], loss, temperature, alpha)
        )
        build = self._builder(hidden, data, seed, hint)
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
        return model, row, correct

    def _builder(
        self, hidden: Sequence[int], data: str, seed: int, hint: int
    ) -> Callable[[], nn.Module]:
        """What makes the untrained student MLP; with ``hint`` passes, a student whose hidden
        layers the FitNets hint stage has already trained (seeded with ``seed``)."""

        def build() -> nn.Module:
            return build_model("mlp", self.image_shape, self.n_classes, hidden=list(hidden))

        if not hint:
            return build
        seed_everything(seed)
        first = build()
        self.loaders[data].generator.manual_seed(seed)
        hint_stage(
            first, self.teacher, self.sets[data], self.loaders[data], hint, self.lr, self.device
        )
        return lambda: first  # stage 2 starts from the hinted layers

    def _run(self, key: tuple, build: Callable[[], nn.Module], loss_fn: LossFn | None) -> tuple:
        """Train the run of ``key``, keeping the states of the shorter snapshot budgets on the way.

        Returns:
            (trained student, training seconds).
        """
        data, seed, passes, hint = key[1], key[5], key[6], key[7]
        steps = len(self.loaders[data])
        keep = {}  # optimizer steps -> key of the shorter run that ends there
        ratio = self.sizes[data] // self.n_images  # the set's size in training-image sets
        shots = self.snapshots if self.schedule == "constant" and not hint else []
        for e in shots:
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
            quiet_loader(self.val_loader) if self.curves_on else None,
            passes - hint,
            loss_fn,
            self.lr,
            self.device,
            after_step=after_step if keep else None,
            schedule=self.schedule,
        )
        self._histories[key] = hist
        seconds = hist["epoch_seconds"].to_numpy()
        for k, m in states.items():
            self._snapped[k] = (m, float(seconds[: k[6]].sum()))
        return model, float(seconds.sum())

    @property
    def runs(self) -> pd.DataFrame:
        """One row per trained (or reused) student and seed."""
        return pd.DataFrame(self.rows)

    def curves(self, names: Sequence[str] | None = None) -> pd.DataFrame:
        """Validation error after each epoch of the named students' runs (``curves=True``).

        Args:
            names: students to show (None: all); runs taken from a snapshot have no curve.

        Returns:
            Long table: student, seed, epoch (passes over the run's set), val_error (fraction);
            empty without ``curves``.
        """
        columns = ["student", "seed", "epoch", "val_error"]
        runs = [(n, s, self._histories.get(k)) for (n, s), k in self._names.items()]
        frames = [
            h.assign(student=n, seed=s, val_error=1.0 - h["val_accuracy"])[columns]
            for n, s, h in runs
            if self.curves_on and h is not None and (names is None or n in names)
        ]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)

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
