"""A learning-rate sweep with and without batch norm, in numbers: the learning rates chosen on
validation accuracy, the epochs BN needs to reach the no-BN model's final accuracy, the rates where
each trains or stays near its best, and the chosen models' test accuracy, with their intervals.

Every function reads the sweep's own frames (one row per run: arch, bn, lr, seed, ...) and returns
numbers or frames; the wording of the targets and facts is notebook 08's
(``nbhelpers.lessons.batch_normalization``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from nbhelpers.core.params import ParameterError
from nbhelpers.measure import correct
from nbhelpers.measure.stats import paired_difference, seed_interval, seed_summary, verdict

#: Points below a model's own best mean validation accuracy that still count as near its best (the
#: robustness target's goal).
NEAR_BEST_POINTS = 1.0


def padded(history: pd.DataFrame, epochs: int, column: str = "val_accuracy") -> np.ndarray:
    """A history column over epochs 1..``epochs``, the last value carried on after an early stop.

    Args:
        history: from ``train.fit`` (shorter when it stopped on divergence).
        epochs: the epoch budget.
        column: the column.

    Returns:
        An array of length ``epochs``.
    """
    s = history.set_index("epoch")[column].reindex(range(1, epochs + 1)).ffill()
    return s.fillna(0.0 if "accuracy" in column else math.inf).to_numpy(dtype=float)


def epochs_to_reach(curve: Sequence[float], level: float) -> float:
    """The first epoch (1-based) at which a curve reaches ``level``; NaN if it never does.

    Args:
        curve: one value per epoch (e.g. mean validation accuracy).
        level: the level to reach.

    Returns:
        The epoch number, or NaN.
    """
    hits = np.flatnonzero(np.asarray(curve, dtype=float) >= level - 1e-12)
    return float(hits[0] + 1) if len(hits) else math.nan


def check_lrs(name: str, values: object, maximum: float = 10.0) -> list[float]:
    """Check a list of learning rates: non-empty, each a number in (0, ``maximum``], distinct.

    Args:
        name: parameter name.
        values: the given list.
        maximum: the largest rate allowed (10 for SGD with momentum 0.9; plain SGD on a sigmoid
            network takes larger ones).

    Returns:
        The learning rates, sorted ascending.
    """
    allowed = f"a non-empty list of distinct learning rates, each a number in (0, {maximum:g}]"
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ParameterError(name, values, allowed)
    for v in values:
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or not math.isfinite(v)
            or not 0 < v <= maximum
        ):
            raise ParameterError(name, values, allowed + f" ({v!r} is not)")
    if len(set(values)) != len(values):
        raise ParameterError(name, values, allowed + " (repeated values)")
    return sorted(float(v) for v in values)


def speed_table(curves: pd.DataFrame, arch: str, epochs: int) -> pd.DataFrame:
    """Per learning rate: the epochs the BN model needs to reach the no-BN model's final accuracy.

    Args:
        curves: one row per (arch, bn, lr, seed, epoch) with ``val_accuracy`` (padded to
            ``epochs``).
        arch: the architecture.
        epochs: the epoch budget of both.

    Returns:
        One row per learning rate trained with and without BN: the no-BN final mean validation
        accuracy, the epochs the mean BN curve needs to reach it, and that as a fraction of the
        budget.
    """
    mean = curves[curves.arch == arch].groupby(["bn", "lr", "epoch"])["val_accuracy"].mean()
    rows = []
    for lr in sorted(curves.loc[curves.arch == arch, "lr"].unique()):
        if (False, lr) not in mean.index.droplevel("epoch") or (
            True,
            lr,
        ) not in mean.index.droplevel("epoch"):
            continue  # trained with one setting only
        plain, bn = mean.loc[(False, lr)].to_numpy(), mean.loc[(True, lr)].to_numpy()
        need = epochs_to_reach(bn, plain[-1])
        rows.append(
            {
                "lr": lr,
                "no_bn_final_val_accuracy": plain[-1],
                "bn_final_val_accuracy": bn[-1],
                "bn_epochs_to_no_bn_final": need,
                "fraction_of_budget": need / epochs,
            }
        )
    return pd.DataFrame(rows)


def speed_with_interval(curves: pd.DataFrame, arch: str, lr: float, epochs: int) -> dict:
    """The speed target at one learning rate, with a 95% interval from the seed spread.

    The measured figure is the share of the budget after which the mean (over seeds) BN validation
    curve first reaches the no-BN model's final mean validation accuracy. Its interval: the shares
    after which the BN curve reaches the low and the high end of the t interval (over seeds) of that
    no-BN final accuracy; an end the BN curve never reaches counts as ``epochs + 1`` epochs.

    Args:
        curves: one row per (arch, bn, lr, seed, epoch) with ``val_accuracy`` (padded to
            ``epochs``).
        arch: the architecture.
        lr: the learning rate (trained with and without BN).
        epochs: the budget of both.

    Returns:
        {"no_bn_final", "no_bn_low", "no_bn_high", "bn_epochs", "fraction", "low", "high",
        "bn_first_epoch", "no_bn_first_epoch"} (fraction NaN when the BN curve never gets there).
    """
    d = curves[(curves.arch == arch) & np.isclose(curves.lr, lr)]
    plain = d[~d.bn.astype(bool)]
    mean = d.groupby(["bn", "epoch"])["val_accuracy"].mean()
    bn_curve = mean.loc[True].reindex(range(1, epochs + 1)).to_numpy()
    final = plain.loc[plain.epoch == epochs, "val_accuracy"].to_numpy(dtype=float)
    level, (lo, hi) = float(final.mean()), seed_interval(final)
    need = epochs_to_reach(bn_curve, level)

    def share(x: float) -> float:
        e = epochs_to_reach(bn_curve, x)
        return (e if math.isfinite(e) else epochs + 1) / epochs

    return {
        "no_bn_final": level,
        "no_bn_low": lo,
        "no_bn_high": hi,
        "bn_epochs": need,
        "fraction": need / epochs,
        "low": share(lo) if math.isfinite(lo) else math.nan,
        "high": share(hi) if math.isfinite(hi) else math.nan,
        "bn_first_epoch": float(bn_curve[0]),
        "no_bn_first_epoch": float(mean.loc[(False, 1)]),
    }


def accuracy_gap(
    best: Sequence[np.ndarray], other: Sequence[np.ndarray]
) -> tuple[float, tuple[float, float]]:
    """Points by which ``other`` is below ``best``, pooled over seeds, with a paired 95% interval.

    Args:
        best: per seed, a boolean array (True where the model was right) on the evaluation images.
        other: the same for the other setting, seed by seed in the same order.

    Returns:
        (points below, (low, high)): Newcombe's paired interval over the pooled (seed, image) pairs;
        it covers the sampling of images, not the spread over seeds.
    """
    d = paired_difference(np.concatenate(list(best)), np.concatenate(list(other)))
    return -float(d["difference"]), (-float(d["high"]), -float(d["low"]))


def grid_lr(lrs: Sequence[float], lr: float) -> float | None:
    """The rate of ``lrs`` equal to ``lr`` up to float rounding, or None."""
    hits = [float(x) for x in lrs if math.isclose(float(x), lr, rel_tol=1e-9)]
    return hits[0] if hits else None


def lr_range(
    final: pd.DataFrame,
    arch: str,
    stall: float,
    val_correct: dict,
    tolerance: float = NEAR_BEST_POINTS,
) -> dict:
    """How much of a learning-rate sweep BN opens: the rates that train and those near the best.

    Only rates trained both with and without BN count, so the two sides see the same sweep. A
    rate *trains* when the mean final validation accuracy over seeds is at least ``stall``; it is
    *near the best* when that mean is at most ``tolerance`` points below the model's own best
    mean over those rates.

    Args:
        final: one row per run: arch, bn, lr, seed, final_val_accuracy.
        arch: the architecture.
        stall: mean final validation accuracy below which a rate failed.
        val_correct: (arch, bn, lr) -> per-seed boolean arrays on the validation images.
        tolerance: points below the own best that still count as near it.

    Returns:
        ``rates`` (the common rates, ascending), ``tolerance``; per side ("bn", "no_bn"): the
        rates that train (``trains_*``), the rates near the best (``near_*``), the largest of
        them (``largest_near_*``, NaN when none) and its gap below the best in points with a
        paired 95% interval over the pooled seeds and validation images (``gap_*``, ``low_*``,
        ``high_*``); ``bn_only`` (rates where BN trains and no-BN fails) and ``near_extra``
        (rates near the best with BN minus those without).
    """
    val = final[final.arch == arch].groupby(["bn", "lr"])["final_val_accuracy"].mean()
    common = sorted(set(map(float, val.loc[False].index)) & set(map(float, val.loc[True].index)))
    out: dict = {"rates": common, "tolerance": float(tolerance)}
    for bn, side in ((True, "bn"), (False, "no_bn")):
        means = {lr: float(val.loc[(bn, lr)]) for lr in common}
        best_lr = max(means, key=means.get)
        near = [lr for lr in common if 100 * (means[best_lr] - means[lr]) <= tolerance + 1e-9]
        top = max(near)
        gap, (low, high) = accuracy_gap(
            val_correct[(arch, bn, best_lr)], val_correct[(arch, bn, top)]
        )
        out |= {
            f"trains_{side}": [lr for lr in common if means[lr] >= stall],
            f"near_{side}": near,
            f"largest_near_{side}": top,
            f"gap_{side}": gap,
            f"low_{side}": low,
            f"high_{side}": high,
        }
    out["bn_only"] = [lr for lr in out["trains_bn"] if lr not in out["trains_no_bn"]]
    out["near_extra"] = len(out["near_bn"]) - len(out["near_no_bn"])
    return out


def lr_facts(
    final: pd.DataFrame,
    curves: pd.DataFrame,
    arch: str,
    epochs: int,
    stall: float,
    val_correct: dict,
    factor: float | None = None,
) -> dict:
    """Learning rates chosen on validation accuracy and the figures of both targets for one model.

    Args:
        final: one row per run: arch, bn, lr, seed, final_val_accuracy.
        curves: one row per (arch, bn, lr, seed, epoch) with ``val_accuracy``.
        arch: the architecture.
        epochs: its budget.
        stall: a no-BN rate whose mean final validation accuracy is below this fails.
        val_correct: (arch, bn, lr) -> per-seed boolean arrays on the validation images.
        factor: robustness at ``factor`` x the best no-BN rate; None: at the smallest failing rate.

    Returns:
        The chosen rates (``best_no_bn_lr``, ``bn_best_lr``), the speed figures of
        ``speed_with_interval`` at the best no-BN rate (``speed``), the failing rates, the rate of
        the robustness target (``robust_lr``, NaN when there is none), the BN model's gap there
        below its best (``bn_gap_points`` with ``gap_low`` and ``gap_high``) and how much of the
        sweep BN opens (``range``, ``lr_range``).
    """
    val = final[final.arch == arch].groupby(["bn", "lr"])["final_val_accuracy"].mean()
    plain, withbn = val.loc[False], val.loc[True]
    best_plain, best_bn = float(plain.idxmax()), float(withbn.idxmax())
    failing = [float(lr) for lr in plain.index if plain.loc[lr] < stall]
    if factor is None:
        robust = min(failing) if failing else None
    else:
        robust = grid_lr(withbn.index, factor * best_plain)
    gap, (low, high) = (
        accuracy_gap(val_correct[(arch, True, best_bn)], val_correct[(arch, True, robust)])
        if robust is not None
        else (math.nan, (math.nan, math.nan))
    )
    return {
        "arch": arch,
        "epochs": epochs,
        "best_no_bn_lr": best_plain,
        "bn_best_lr": best_bn,
        "no_bn_best_val": float(plain.max()),
        "bn_best_val": float(withbn.max()),
        "speed": speed_with_interval(curves, arch, best_plain, epochs),
        "no_bn_failing_lrs": failing,
        "robust_lr": math.nan if robust is None else robust,
        "no_bn_val_at_robust_lr": float(plain.get(robust, math.nan))
        if robust is not None
        else math.nan,
        "bn_val_at_robust_lr": float(withbn.loc[robust]) if robust is not None else math.nan,
        "bn_gap_points": gap,
        "gap_low": low,
        "gap_high": high,
        "range": lr_range(final, arch, stall, val_correct),
    }


def chosen_test(final: pd.DataFrame, models: dict, test_loader) -> pd.DataFrame:
    """Test accuracy, measured once, of each model at its learning rate chosen on validation.

    Only the chosen models see the test images; the choice uses validation accuracy alone.

    Args:
        final: one row per run: arch, bn, lr, seed, final_val_accuracy.
        models: (arch, bn, lr, seed) -> the trained model.
        test_loader: the test images, in a fixed order.

    Returns:
        One row per (arch, bn): the chosen lr, mean validation and test accuracy over seeds, the
        test sd, and in the BN row the paired difference BN - no BN in points (pooled over seeds)
        with its 95% interval and verdict.
    """
    rows = []
    for arch in dict.fromkeys(final["arch"]):
        val = final[final.arch == arch].groupby(["bn", "lr"])["final_val_accuracy"].mean()
        pooled = {}
        for bn in (False, True):
            lr = float(val.loc[bn].idxmax())
            seeds = sorted(
                final.loc[
                    (final.arch == arch) & (final.bn == bn) & np.isclose(final.lr, lr), "seed"
                ]
            )
            hits = [correct(models[(arch, bn, lr, sd)], test_loader) for sd in seeds]
            s = seed_summary([float(h.mean()) for h in hits])
            pooled[bn] = np.concatenate(hits)
            rows.append(
                {
                    "arch": arch,
                    "bn": bn,
                    "lr": lr,
                    "val_mean": float(val.loc[(bn, lr)]),
                    "test_mean": s.mean,
                    "test_sd": s.std,
                    "seeds": s.n,
                }
            )
        d = paired_difference(pooled[False], pooled[True])
        rows[-1].update(
            bn_minus_no_bn_points=d["difference"],
            diff_low=d["low"],
            diff_high=d["high"],
            verdict=verdict(d["low"], d["high"]),
        )
    return pd.DataFrame(rows)
