"""Notebook 08's lesson code: the from-scratch layer checked against torch on random batches, the
speed and robustness targets with their wording, the drift table, the facts table (with what the
learning-rate sweep shows BN opens) and the figures of the sweep and of the activations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from torch import nn

from nbhelpers.core.params import ParameterError, check_int
from nbhelpers.measure.facts import fact_table
from nbhelpers.measure.targets import target
from nbhelpers.techniques.normalization import from_torch

#: Ioffe and Szegedy (2015), section 4.1 and Figure 1(a): what the paper says of its MNIST curves
#: (they carry no number), drawn beside ours.
PAPER_FIGURE1 = (
    "Ioffe and Szegedy 2015, section 4.1, Figure 1(a):\n"
    "28x28 binary images; 3 fully connected hidden\nlayers of 100 sigmoid units, weights "
    "initialized\nto small random Gaussian values; 50,000 steps\nof 60 examples; test accuracy "
    'against steps.\n\n"The batch-normalized network enjoys the\nhigher test accuracy."\n'
    'Caption: BN "helps the network train faster\nand achieve higher accuracy."\n\n'
    "Their axes: 10K to 50K steps, accuracy 0.7 to 1."
)


def check_baseline_epochs(value: object) -> tuple[int, int]:
    """Check ``BASELINE_EPOCHS``: the epochs of the shared MLP and LeNet-5 baselines.

    Args:
        value: a list of two positive integers.

    Returns:
        (MLP epochs, LeNet-5 epochs).
    """
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ParameterError("BASELINE_EPOCHS", value, "[MLP epochs, LeNet-5 epochs]")
    return tuple(check_int("BASELINE_EPOCHS", v, minimum=1) for v in value)  # type: ignore


def figure1_target(cmp: dict) -> dict:
    """Ioffe and Szegedy's claim as a target: BN's mean test curve above no-BN's at every scoring.

    Args:
        cmp: ``normalization.compare_curves`` at the best no-BN rate.

    Returns:
        A ``targets.target`` dict whose note states the first step where BN is not above.
    """
    first = cmp["first_step_not_above"]
    note = f"share of {cmp['points']} scorings to step {cmp['last_step']:,}; first step not above: "
    return target(f"sigmoid mlp: BN's test curve above no-BN's at lr {cmp['lr']:g} (Figure 1a)",
                  cmp["share_above"], ">=", 1.0, "",
                  note + ("none" if math.isnan(first) else f"{first:,.0f}"))  # fmt: skip


def figure1_facts(cmp: dict, paper_std: float) -> pd.DataFrame:
    """Facts of the Figure 1 comparison (``normalization.compare_curves``), to join ``summary``.

    Args:
        cmp: the comparison at the best no-BN rate.
        paper_std: ``SIG_PAPER_STD`` (0: torch's initial weights and gray pixels).

    Returns:
        A ``facts.fact_table`` (4 significant digits).
    """
    first, last = cmp["first_step_not_above"], f"step {cmp['last_step']:,}"
    setup = f"binary pixels, N(0, {paper_std:g}^2)" if paper_std else "gray pixels, torch init"
    seeds = ", ".join(f"seed {k}: " + ("never" if math.isnan(v) else f"{v:,.0f}")
                      for k, v in cmp["seed_first_not_above"].items())  # fmt: skip
    return fact_table([
        ("Figure 1: share of test scorings with BN above", cmp["share_above"], "fraction",
         f"mean over seeds, lr {cmp['lr']:g}, {cmp['points']} scorings, {setup}"),
        ("Figure 1: first step BN not above", "never" if math.isnan(first) else first, "step",
         f"per seed: {seeds}"),
        ("Figure 1: smallest gap, BN minus no BN", round(cmp["smallest_gap_points"], 2), "points",
         f"at step {cmp['smallest_gap_step']:,}"),
        ("Figure 1: test accuracy at the last step, BN", cmp["bn_last"], "accuracy", last),
        ("Figure 1: test accuracy at the last step, no BN", cmp["no_bn_last"], "accuracy", last),
    ], digits=4)  # fmt: skip


def figure1_figure(curves: pd.DataFrame, cmp: dict) -> Figure:
    """Our Figure 1(a) beside the paper's description: test accuracy against training steps with
    and without BN at one rate (mean over seeds, thick; each seed, thin), on the paper's axes.

    Args:
        curves: ``normalization.step_curves``.
        cmp: ``normalization.compare_curves`` at the rate shown.

    Returns:
        The figure.
    """
    fig, (ax, text) = plt.subplots(1, 2, figsize=(11, 3.8), width_ratios=(1.5, 1))
    at, steps = curves[curves["lr"].astype(float) == cmp["lr"]], sorted(cmp["mean"])
    for bn, color, label in ((False, "tab:blue", "no BN"), (True, "tab:orange", "BN")):
        for _, s in at[at["bn"] == bn].groupby("seed"):
            ax.plot(s["step"], s["accuracy"], color=color, lw=0.6, alpha=0.4)
        ax.plot(steps, [cmp["mean"][t][label] for t in steps], color=color, lw=2, label=label)
    low = min(0.7, float(at["accuracy"].quantile(0.05)))
    ax.set(xlabel="training steps", ylabel="test accuracy", ylim=(low, 1.0),
           title=f"Ours: sigmoid 3 x 100, lr {cmp['lr']:g}")  # fmt: skip
    ax.legend(loc="lower right"), text.axis("off")
    k = plt.FuncFormatter(lambda v, _: f"{v / 1e3:g}K" if v >= 1e3 else f"{v:g}")  # 10K steps
    ax.xaxis.set_major_formatter(k)
    text.text(0.0, 1.0, PAPER_FIGURE1, va="top", fontsize=9, family="serif", wrap=True)
    fig.tight_layout()
    return fig


def compare_with_torch(kind: str, steps: int = 5, c: int = 8, seed: int = 0) -> dict:
    """Largest differences between torch's batch norm and ``BatchNorm`` over training steps, then
    in eval.

    Random batches (mean 1, sd 2) of 16 examples; the error of a value is |a - b| / (1 + |a|).

    Args:
        kind: "1d" or "2d" (6x6 feature maps).
        steps: training steps compared.
        c: features or channels.
        seed: seed of the parameters and batches.

    Returns:
        The largest error of the training output, input gradient, running mean, running variance
        and evaluation output, and the largest absolute difference of any of them.
    """
    torch.manual_seed(seed)
    ref = (nn.BatchNorm1d if kind == "1d" else nn.BatchNorm2d)(c)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 2.0), ref.bias.normal_()
    ours = from_torch(ref)
    keys = ("train output", "input gradient", "running mean", "running var", "eval output")
    diff, absd = dict.fromkeys(keys, 0.0), dict.fromkeys(keys, 0.0)

    def err(a: torch.Tensor, b: torch.Tensor, key: str) -> None:
        a, b = a.detach(), b.detach()
        diff[key] = max(diff[key], float(((a - b).abs() / (1 + a.abs())).max()))
        absd[key] = max(absd[key], float((a - b).abs().max()))

    shape = [16, c] + ([] if kind == "1d" else [6, 6])
    for _ in range(steps):
        x = torch.randn(*shape) * 2 + 1
        xr, xo = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        yr, yo = ref(xr), ours(xo)
        yr.pow(2).sum().backward(), yo.pow(2).sum().backward()
        err(yr, yo, "train output"), err(xr.grad, xo.grad, "input gradient")
        err(ref.running_mean, ours.running_mean, "running mean")
        err(ref.running_var, ours.running_var, "running var")
    ref.eval(), ours.eval()
    x = torch.randn(*shape) * 2 + 1
    with torch.no_grad():
        err(ref(x), ours(x), "eval output")
    return {
        **{f"{k} error": v for k, v in diff.items()},
        "largest |difference|": max(absd.values()),
    }


def bn_targets(f: dict) -> list[dict]:
    """The speed and robustness targets of one model from its ``lr_facts``, with their intervals.

    Args:
        f: ``lr_facts`` of the model.

    Returns:
        Two ``targets.target`` dicts: the BN share of the budget to reach the no-BN final validation
        accuracy (at most 1/3), and the BN validation accuracy at the robustness rate below its best
        (at most 1 point).
    """
    sp, a = f["speed"], f["arch"]

    def span(lo: float, hi: float) -> tuple[float, float] | None:
        return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None

    return [
        target(
            f"{a}: BN epochs to the no-BN final val accuracy at lr {f['best_no_bn_lr']:g}, "
            "share of the budget",
            sp["fraction"],
            "<=",
            1 / 3,
            "",
            f"no-BN ends at {sp['no_bn_final']:.4f} after {f['epochs']} epochs",
            interval=span(sp["low"], sp["high"]),
        ),
        target(
            f"{a}: BN val accuracy below its best, at lr {f['robust_lr']:g}",
            f["bn_gap_points"],
            "<=",
            1.0,
            "points",
            "no robustness rate in the grid"
            if not math.isfinite(f["robust_lr"])
            else f"no-BN mean val {f['no_bn_val_at_robust_lr']:.3f} there",
            interval=span(f["gap_low"], f["gap_high"]),
        ),
    ]


def drift_table(act: pd.DataFrame) -> pd.DataFrame:
    """How far each layer's input distribution moves during training, per run.

    Args:
        act: rows of ``ActivationStats.frame()`` with a ``run`` column.

    Returns:
        One row per (run, layer): the range (max - min over the recorded steps) of the median and of
        the 15-85 spread, and the last spread.
    """
    return (
        act.assign(spread=act["q85"] - act["q15"])
        .groupby(["run", "layer"])
        .agg(
            median_range=("q50", lambda s: s.max() - s.min()),
            spread_range=("spread", lambda s: s.max() - s.min()),
            spread_last=("spread", "last"),
        )
        .reset_index()
    )


def _range_rows(arch: str, r: dict) -> list[tuple]:
    """The fact rows of one model's ``lr_range``: what the sweep shows BN opens."""
    tol = r["tolerance"]
    near = f"within {tol:g} point{'' if tol == 1 else 's'} of its best"
    listed = ", ".join(f"{x:g}" for x in r["bn_only"]) or "none"
    rows = [
        (
            f"{arch}: rates where BN trains and no-BN fails",
            len(r["bn_only"]),
            "rates",
            f"{listed}; of {len(r['rates'])} rates with both",
        ),
        (
            f"{arch}: rates {near}, BN minus no BN",
            r["near_extra"],
            "rates",
            f"BN {len(r['near_bn'])}, no BN {len(r['near_no_bn'])}; mean val",
        ),
    ]
    for side, label in (("bn", "BN"), ("no_bn", "no BN")):
        rows.append(
            (
                f"{arch}: largest lr {near}, {label}",
                r[f"largest_near_{side}"],
                "",
                f"{r[f'gap_{side}']:.2f} [{r[f'low_{side}']:.2f}, {r[f'high_{side}']:.2f}] "
                "points below",
            )
        )
    return rows


def summary(
    facts: Sequence[dict],
    chosen: pd.DataFrame,
    drift: pd.DataFrame,
    small: pd.DataFrame,
    forgot_drop_points: float,
    fold_max_diff: float,
    n_val: int,
    n_test: int,
    scratch_error: float | None = None,
    scale_grad_ratio: float | None = None,
) -> pd.DataFrame:
    """This run's facts for the discussion of notebook 08 to point at by name.

    Args:
        facts: ``lr_facts`` of each model (ReLU MLP, LeNet-5, sigmoid MLP).
        chosen: ``chosen_test``.
        drift: per run and layer of the sigmoid net: ``median_range``, ``spread_range``.
        small: the small-batch runs: batch, norm, val_accuracy.
        forgot_drop_points: eval-mode accuracy minus train-mode accuracy on label-sorted batches.
        fold_max_diff: largest logit difference between a BN model and its folded copy.
        n_val: validation images; n_test: test images.
        scratch_error: largest error of the from-scratch layer against torch's (None: no row).
        scale_grad_ratio: weight-gradient norm at scale 1 over that at the largest scale of
            ``scale_invariance`` (None: no row).

    Returns:
        A ``facts.fact_table`` (value, unit, context), 4 significant digits; per model also what
        the sweep shows BN opens (``lr_range``): the rates where BN trains and no-BN fails, the
        rates near the best with BN minus without, and the largest near-best rate of each.
    """
    rows = []
    for f in facts:
        a, sp = f["arch"], f["speed"]
        rows += [
            (
                f"{a}: best lr without BN",
                f["best_no_bn_lr"],
                "",
                "highest mean validation accuracy",
            ),
            (f"{a}: best lr with BN", f["bn_best_lr"], "", "highest mean validation accuracy"),
            (
                f"{a}: no-BN final val accuracy",
                sp["no_bn_final"],
                "",
                f"at lr {f['best_no_bn_lr']:g}, epoch {f['epochs']}",
            ),
            (f"{a}: val accuracy after epoch 1, no BN", sp["no_bn_first_epoch"], "", "same lr"),
            (f"{a}: val accuracy after epoch 1, BN", sp["bn_first_epoch"], "", "same lr"),
            (f"{a}: BN epochs to the no-BN final", sp["bn_epochs"], "epochs", f"of {f['epochs']}"),
            (
                f"{a}: share of the budget",
                sp["fraction"],
                "",
                f"95% interval [{sp['low']:.3g}, {sp['high']:.3g}]; goal <= 1/3",
            ),
            (
                f"{a}: rates where no-BN fails",
                ", ".join(f"{x:g}" for x in f["no_bn_failing_lrs"]) or "none",
                "",
                "mean final val accuracy below STALL_ACCURACY",
            ),
            (
                f"{a}: BN below its best at lr {f['robust_lr']:g}",
                f["bn_gap_points"],
                "points",
                f"95% interval [{f['gap_low']:.3g}, {f['gap_high']:.3g}]; goal <= 1",
            ),
        ]
        rows += _range_rows(a, f["range"])
        for _, r in chosen[(chosen.arch == a)].iterrows():
            rows.append(
                (
                    f"{a}: test accuracy, {'BN' if r.bn else 'no BN'}",
                    r.test_mean,
                    "",
                    f"lr {r.lr:g}, mean of {r.seeds} seeds",
                )
            )
        r = chosen[(chosen.arch == a) & chosen.bn.astype(bool)].iloc[0]
        rows.append(
            (
                f"{a}: test, BN minus no BN",
                r.bn_minus_no_bn_points,
                "points",
                f"[{r.diff_low:.3g}, {r.diff_high:.3g}]: {r.verdict}",
            )
        )
    for _, r in drift.iterrows():
        rows.append(
            (
                f"{r.layer} input, {r.run}: median moved",
                r.median_range,
                "",
                "max - min over training",
            )
        )
        rows.append(
            (
                f"{r.layer} input, {r.run}: 15-85 spread moved",
                r.spread_range,
                "",
                "max - min over training",
            )
        )
    for bs in (small["batch"].min(), small["batch"].max()):
        for _, r in small[small.batch == bs].iterrows():
            rows.append(
                (f"batch {bs}: val accuracy, {r.norm}", r.val_accuracy, "", "small-batch runs")
            )
    rows += [
        ("forgotten eval, label-sorted: drop", forgot_drop_points, "points", "smallest test batch"),
        ("folding: largest logit difference", fold_max_diff, "", "float rounding"),
        ("one validation image", 100 / n_val, "points", f"{n_val:,} validation images"),
        ("one test image", 100 / n_test, "points", f"{n_test:,} test images"),
    ]
    if scratch_error is not None:
        rows.append(
            (
                "from-scratch BN: largest error",
                scratch_error,
                "",
                "vs torch, train and eval; goal 1e-6",
            )
        )
    if scale_grad_ratio is not None:
        rows.append(
            (
                "weights scaled before BN: gradient shrink",
                scale_grad_ratio,
                "x",
                "gradient norm at scale 1 / at the largest scale",
            )
        )
    return fact_table(rows, digits=4)


def percentile_bands(stats: pd.DataFrame, title: str = "") -> Figure:
    """The 15th/50th/85th percentiles of each activation's input over training, one panel per (run,
    layer).

    Args:
        stats: rows from ``ActivationStats.frame()`` with an added ``run`` column.
        title: the figure title.

    Returns:
        The figure.
    """
    runs, layers = list(dict.fromkeys(stats["run"])), list(dict.fromkeys(stats["layer"]))
    fig, axes = plt.subplots(
        len(runs),
        len(layers),
        figsize=(4.2 * len(layers), 2.8 * len(runs)),
        squeeze=False,
        sharex=True,
    )
    for r, run in enumerate(runs):
        for c, layer in enumerate(layers):
            d, ax = stats[(stats.run == run) & (stats.layer == layer)], axes[r, c]
            ax.fill_between(d["step"], d["q15"], d["q85"], alpha=0.3, label="15-85th percentile")
            ax.plot(d["step"], d["q50"], label="median")
            ax.axhline(0, color="gray", lw=0.6)
            ax.set_title(f"{run}: {layer} input", fontsize=9)
            ax.set_xlabel("training step" if r == len(runs) - 1 else "")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def accuracy_heatmap(final: pd.DataFrame, value: str = "test_accuracy", title: str = "") -> Figure:
    """Heatmap of the mean (over seeds) of ``value`` by architecture and BN (rows) and learning
    rate.

    Args:
        final: one row per run with columns arch, bn, lr and ``value``.
        value: the column averaged.
        title: the title.

    Returns:
        The figure.
    """
    d = final.assign(model=final["arch"] + np.where(final["bn"], " + BN", " no BN"))
    table = d.pivot_table(index="model", columns="lr", values=value, aggfunc="mean")
    fig, ax = plt.subplots(figsize=(1.3 * table.shape[1] + 2.5, 0.6 * table.shape[0] + 1.5))
    sns.heatmap(
        table,
        annot=True,
        fmt=".3f",
        cmap="viridis",
        vmin=0,
        vmax=1,
        ax=ax,
        cbar_kws={"label": f"mean {value}"},
    )
    ax.set_xlabel("learning rate (SGD, momentum 0.9)")
    ax.set_ylabel("")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def curves_figure(
    curves: pd.DataFrame, arch: str, metric: str = "val_accuracy", logy: bool = False
) -> Figure:
    """Mean (band: standard deviation over seeds) of a metric per epoch, one panel per learning
    rate.

    Args:
        curves: one row per (arch, bn, lr, seed, epoch) with the metric.
        arch: the architecture shown.
        metric: the column plotted.
        logy: log-scale y axis (for losses).

    Returns:
        The figure.
    """
    d = curves[curves.arch == arch].assign(BN=lambda f: np.where(f["bn"], "with BN", "without BN"))
    lrs = sorted(d["lr"].unique())
    fig, axes = plt.subplots(1, len(lrs), figsize=(3.2 * len(lrs), 3.2), sharey=True, squeeze=False)
    for ax, lr in zip(axes[0], lrs):
        sns.lineplot(
            data=d[d.lr == lr],
            x="epoch",
            y=metric,
            hue="BN",
            hue_order=["without BN", "with BN"],
            errorbar="sd",
            ax=ax,
            legend=ax is axes[0, 0],
        )
        ax.set_title(f"lr = {lr:g}")
        if logy:
            ax.set_yscale("log")
    fig.suptitle(f"{arch}: {metric} (mean and sd over seeds)")
    fig.tight_layout()
    return fig
