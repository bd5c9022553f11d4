"""Hyperparameter search on your own training function at a budget of training steps, with Optuna:
a sampler (TPE or random) and a pruner (ASHA, Hyperband or none), every trial counted by the steps
it really trained.

A **fit** is your train-and-evaluate callable, ``fit(params, seed, checkpoints)``: it trains a
fresh model with the hyperparameters ``params`` (a dict, one value per dimension of the space),
seeded by ``seed``, and yields ``(step, score)`` at each step of ``checkpoints`` in order, lower
scores better (a validation loss). It may stop early by yielding a non-finite score (the run
diverged). Written as a generator, a fit that the pruner stops is simply not resumed: its later
steps are never trained.

``search`` runs one Optuna study on a fit until ``budget`` training steps are spent. Each trial
trains to ``steps`` unless the pruner stops it at a rung (a step of ``rungs``, where it reports
its score) or the budget runs out during it (the trial is **cut**; its steps count). The
returned table has one row per trial in the order run, with the steps it trained, the steps
spent by the study so far and the best completed score so far: the compute-against-quality curve
(``plot_compute``) and the steps at which a search first reaches a score (``steps_to_reach``)
come from it.

Trial ``n`` of a study with seed ``s`` trains with seed ``trial_seed(s, n)`` whatever the
sampler, and TPE's start-up trials are drawn by the same seeded random sampler as random search:
two searches with one seed start from the same configurations trained identically, and differ
only where TPE's model and the pruner take over (common random numbers).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from nbhelpers.core.params import ParameterError, check_choice, check_int

#: A train-and-evaluate callable: (params, seed, checkpoints) -> (step, score) at each checkpoint.
Fit = Callable[[dict[str, Any], int, list[int]], Iterable[tuple[int, float]]]
#: Samplers by name: Optuna's ``TPESampler`` and ``RandomSampler``.
SAMPLERS = ("tpe", "random")
#: Pruners by name: ``SuccessiveHalvingPruner`` (ASHA), ``HyperbandPruner``, ``NopPruner``.
PRUNERS = ("asha", "hyperband", "none")
#: How a trial ended: trained to ``steps``; stopped by the pruner; stopped when the budget ran
#: out; its score became NaN or infinite.
STATES = ("complete", "pruned", "cut", "diverged")

_SPACE_ALLOWED = (
    "a non-empty dict {hyperparameter: {'low': a, 'high': b, 'log': bool, 'int': bool}} with "
    "numbers low < high (low > 0 on a log scale; integer bounds for 'int')"
)


def _optuna() -> Any:
    """Optuna, imported quietly (its tqdm import warns in notebooks), logging warnings only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def check_space(name: str, space: Any) -> dict[str, dict]:
    """Check a search space of numeric ranges and return it with ``log`` and ``int`` filled in.

    Args:
        name: the parameter named in errors.
        space: {hyperparameter: {"low", "high"[, "log"][, "int"]}}.

    Returns:
        A new dict, each dimension {"low", "high", "log", "int"} (bounds int for "int").
    """
    if not isinstance(space, Mapping) or not space:
        raise ParameterError(name, space, _SPACE_ALLOWED)
    out = {}
    for key, dim in space.items():
        where = f"{_SPACE_ALLOWED}; problem with {key!r}"
        if not isinstance(dim, Mapping) or not {"low", "high"} <= set(dim) <= {
            "low", "high", "log", "int"
        }:  # fmt: skip
            raise ParameterError(name, space, where)
        low, high = dim["low"], dim["high"]
        log, is_int = bool(dim.get("log", False)), bool(dim.get("int", False))
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                 for v in (low, high))  # fmt: skip
        ok = ok and low < high and not (log and low <= 0)
        if not ok or (is_int and not (float(low).is_integer() and float(high).is_integer())):
            raise ParameterError(name, space, where)
        cast = int if is_int else float
        out[key] = {"low": cast(low), "high": cast(high), "log": log, "int": is_int}
    return out


def check_rungs(name: str, rungs: Any, steps: int, eta: int) -> list[int]:
    """Check the rungs: the steps at which a trial reports its score and the pruner may stop it.

    Optuna's pruners judge a trial at ``min_resource * eta**k`` steps, so the rungs must be that
    sequence: ``rungs[k] == rungs[0] * eta**k``, strictly increasing, all below ``steps`` (the
    last step is the trial's result, never a rung).

    Args:
        name: the parameter named in errors.
        rungs: a non-empty list of integers.
        steps: the steps of a full trial.
        eta: the reduction factor, at least 2.

    Returns:
        The rungs as a list of ints.
    """
    allowed = (f"a non-empty, strictly increasing list of steps from 1 to below the steps of a "
               f"trial ({steps}), each eta = {eta} times the one before (r, r*{eta}, "
               f"r*{eta}**2, ...: where Optuna's pruners judge)")  # fmt: skip
    ints = (
        isinstance(rungs, (list, tuple))
        and bool(rungs)
        and all(isinstance(r, int) and not isinstance(r, bool) for r in rungs)
    )
    if not ints or not all(1 <= r < steps for r in rungs):
        raise ParameterError(name, rungs, allowed)
    if any(b <= a for a, b in zip(rungs, rungs[1:])):
        raise ParameterError(name, rungs, allowed)
    if any(r != rungs[0] * eta**k for k, r in enumerate(rungs)):
        raise ParameterError(name, rungs, allowed)
    return [int(r) for r in rungs]


def check_budget(name: str, budget: Any, steps: int) -> int:
    """Check a search's budget of training steps: at least one full trial.

    Args:
        name: the parameter named in errors.
        budget: training steps a search may spend.
        steps: the steps of a full trial.

    Returns:
        The budget.
    """
    budget = check_int(name, budget)
    if budget < steps:
        raise ParameterError(name, budget, f"an integer of at least {steps}: one full trial")
    return budget


def make_sampler(name: str, seed: int, startup: int = 10) -> Any:
    """An Optuna sampler by name, seeded.

    Args:
        name: "tpe" (``TPESampler``, Optuna's defaults: multivariate, gamma(n) = ceil(n/10)) or
            "random" (``RandomSampler``).
        seed: its seed.
        startup: TPE's start-up trials, drawn at random before its model takes over.

    Returns:
        The sampler.
    """
    check_choice("sampler", name, SAMPLERS)
    optuna = _optuna()
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = check_int("startup", startup, minimum=1)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def make_pruner(name: str, rungs: Sequence[int], steps: int, eta: int) -> Any:
    """An Optuna pruner by name, judging at ``rungs`` (``check_rungs``).

    Args:
        name: "asha" (``SuccessiveHalvingPruner(min_resource=rungs[0], reduction_factor=eta)``),
            "hyperband" (``HyperbandPruner`` from ``rungs[0]`` to ``steps``) or "none".
        rungs: the rungs (their first is the pruners' ``min_resource``).
        steps: the steps of a full trial.
        eta: the reduction factor.

    Returns:
        The pruner.
    """
    check_choice("pruner", name, PRUNERS)
    optuna = _optuna()
    if name == "none":
        return optuna.pruners.NopPruner()
    eta = check_int("eta", eta, minimum=2)
    rungs = check_rungs("rungs", list(rungs), steps, eta)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=rungs[0], reduction_factor=eta, min_early_stopping_rate=0
        )
    return optuna.pruners.HyperbandPruner(
        min_resource=rungs[0], max_resource=steps, reduction_factor=eta
    )


def suggest(trial: Any, space: Mapping[str, dict]) -> dict[str, Any]:
    """Draw one configuration: ``trial.suggest_int`` or ``suggest_float`` per dimension, in order.

    Args:
        trial: an Optuna trial.
        space: a checked space (``check_space``).

    Returns:
        {hyperparameter: value}.
    """
    return {k: (trial.suggest_int if d["int"] else trial.suggest_float)(
        k, d["low"], d["high"], log=d["log"]) for k, d in space.items()}  # fmt: skip


def trial_seed(seed: int, number: int) -> int:
    """The training seed of trial ``number`` of a study with seed ``seed``: ``10_000 * seed +
    number`` (the same trial number trains alike in every study of that seed)."""
    return 10_000 * int(seed) + int(number)


def _run_trial(trial: Any, fit: Fit, space: Mapping, steps: int, stop: int, rungs: Sequence[int],
               seed: int, row: dict) -> float:  # fmt: skip
    """One trial: suggest, train through the fit's checkpoints, report at rungs; fills ``row``."""
    optuna = _optuna()
    params = suggest(trial, space)
    row.update(params)
    checkpoints = [r for r in rungs if r < stop] + [stop]
    run = iter(fit(params, trial_seed(seed, trial.number), checkpoints))
    try:
        for k, (step, score) in enumerate(run):
            bad = k >= len(checkpoints) or not (checkpoints[k - 1] if k else 0) < step
            bad = bad or step > checkpoints[k]
            if bad or (math.isfinite(score) and step != checkpoints[k]):
                raise ValueError(f"the fit yielded step {step}; expected the checkpoints "
                                 f"{checkpoints} in order")  # fmt: skip
            row.update(steps=int(step), last=float(score))
            if not math.isfinite(score):  # diverged: may stop between checkpoints
                row["state"] = "diverged"
                raise optuna.TrialPruned()
            if step == steps:
                row.update(state="complete", value=float(score))
                return float(score)
            if step in rungs:
                row[f"rung_{step}"] = float(score)
                trial.report(float(score), step)
                if trial.should_prune():
                    row["state"] = "pruned"
                    raise optuna.TrialPruned()
            if step == stop:  # the budget ran out during this trial
                raise optuna.TrialPruned()
        raise ValueError(f"the fit stopped at step {row['steps']} with a finite score; expected "
                         f"the checkpoints {checkpoints}")  # fmt: skip
    finally:
        getattr(run, "close", lambda: None)()


def search(
    fit: Fit,
    space: Mapping[str, dict],
    steps: int,
    budget: int,
    sampler: str = "tpe",
    pruner: str = "asha",
    rungs: Sequence[int] = (),
    eta: int = 3,
    seed: int = 0,
    startup: int = 10,
) -> pd.DataFrame:
    """One Optuna study (minimizing the fit's score) until ``budget`` training steps are spent.

    Args:
        fit: your train-and-evaluate callable (see the module's docstring).
        space: {hyperparameter: {"low", "high"[, "log"][, "int"]}} (``check_space``).
        steps: training steps of a full trial; its score there is the trial's value.
        budget: training steps the study may spend, at least ``steps``.
        sampler: one of ``SAMPLERS``.
        pruner: one of ``PRUNERS``.
        rungs: where trials report their score (``check_rungs``; may be empty with "none").
        eta: the pruner's reduction factor: about 1/eta of the trials pass each rung.
        seed: seed of the sampler, of the trials' training seeds (``trial_seed``) and of
            Hyperband's bracket assignment (through the study's name).
        startup: TPE's random start-up trials.

    Returns:
        One row per trial in the order run: trial, seed (its training seed), each
        hyperparameter, state (``STATES``), steps (trained), spent (by the study after it), value
        (the score at ``steps``; NaN unless complete), best (the least value of a complete trial
        so far; NaN before the first), last (the last score seen), ``rung_<r>`` (the score
        reported at rung r; NaN where it stopped before).
    """
    space = check_space("space", space)
    steps = check_int("steps", steps, minimum=1)
    budget = check_budget("budget", budget, steps)
    eta = check_int("eta", eta, minimum=2)
    rungs = [] if pruner == "none" and not rungs else check_rungs("rungs", rungs, steps, eta)
    optuna = _optuna()
    study = optuna.create_study(direction="minimize", sampler=make_sampler(sampler, seed, startup),
                                pruner=make_pruner(pruner, rungs, steps, eta),
                                study_name=f"{sampler}-{pruner}-seed{seed}")  # fmt: skip
    rows: list[dict] = []

    def objective(trial: Any) -> float:
        spent = sum(r["steps"] for r in rows)
        row = {"trial": trial.number, "seed": trial_seed(seed, trial.number), "state": "cut",
               "steps": 0, "value": math.nan, "last": math.nan}  # fmt: skip
        rows.append(row)
        return _run_trial(trial, fit, space, steps, min(steps, budget - spent), rungs, seed, row)

    def stop_when_spent(study: Any, _trial: Any) -> None:
        if sum(r["steps"] for r in rows) >= budget:
            study.stop()

    study.optimize(objective, callbacks=[stop_when_spent])
    table = pd.DataFrame(rows)
    table["spent"] = table["steps"].cumsum()
    table["best"] = table["value"].cummin().ffill()  # NaN until the first complete trial
    rung_cols = [f"rung_{r}" for r in rungs if f"rung_{r}" in table]
    order = ["trial", "seed", *space, "state", "steps", "spent", "value", "best", "last"]
    return table[order + rung_cols]


def steps_to_reach(trials: pd.DataFrame, target: float) -> int | None:
    """Training steps a search had spent when a complete trial first scored ``target`` or less.

    Args:
        trials: ``search``'s table.
        target: the score to reach (lower is better).

    Returns:
        The ``spent`` of that trial, or None when no complete trial reached it.
    """
    hit = trials[trials["value"] <= target]
    return None if hit.empty else int(hit["spent"].iloc[0])


def reach_table(
    searches: Mapping[str, Sequence[pd.DataFrame]],
    reference: str,
    challenger: str,
    seeds: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Per seed: the reference search's final best, the steps it took to find it, and the steps
    the challenger took to reach it (NaN: never, within its budget).

    ``ratio`` is the challenger's steps over the reference's; a seed whose challenger never
    reached is filled in with its budget + 1 steps (so that ratio is a lower bound, ``reached``
    False).

    Args:
        searches: method -> one ``search`` table per seed (same seeds, same order).
        reference: the method whose best is the goal (random search).
        challenger: the method measured against it.
        seeds: the seeds' labels (None: 0, 1, ...).

    Returns:
        One row per seed: seed, reference_best, reference_steps, challenger_steps, reached,
        ratio, challenger_best, budget (the challenger's steps spent in all).
    """
    rows = []
    for k, (ref, ch) in enumerate(zip(searches[reference], searches[challenger])):
        goal = float(ref["value"].min())
        ref_steps, ch_steps = steps_to_reach(ref, goal), steps_to_reach(ch, goal)
        spent = int(ch["spent"].iloc[-1])
        filled = spent + 1 if ch_steps is None else ch_steps
        rows.append({"seed": k if seeds is None else seeds[k], "reference_best": goal,
                     "reference_steps": ref_steps, "challenger_steps": ch_steps,
                     "reached": ch_steps is not None,
                     "ratio": filled / ref_steps if ref_steps else math.nan,
                     "challenger_best": float(ch["value"].min()), "budget": spent})  # fmt: skip
    return pd.DataFrame(rows)


def compute_curves(searches: Mapping[str, Sequence[pd.DataFrame]]) -> pd.DataFrame:
    """The best complete score so far against training steps spent, every method and seed.

    Args:
        searches: method -> one ``search`` table per seed.

    Returns:
        Long table: method, seed (position), trial, spent, best.
    """
    parts = [t[["trial", "spent", "best"]].assign(method=m, seed=k)
             for m, tables in searches.items() for k, t in enumerate(tables)]  # fmt: skip
    return pd.concat(parts, ignore_index=True)[["method", "seed", "trial", "spent", "best"]]


def plot_compute(
    searches: Mapping[str, Sequence[pd.DataFrame]],
    reference: str,
    challenger: str,
    seeds: Sequence[int] | None = None,
    ylabel: str = "best validation score so far",
) -> Figure:
    """One panel per seed: each method's best complete score against training steps spent, the
    reference's final best dashed, and a marker where the challenger first reaches it.

    Args:
        searches: method -> one ``search`` table per seed.
        reference: the method whose final best is the goal.
        challenger: the method whose first reach of it is marked.
        seeds: the seeds' labels for the panels' titles (None: 0, 1, ...).
        ylabel: the score axis's label.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    curves = compute_curves(searches)
    reach = reach_table(searches, reference, challenger, seeds)
    n = len(reach)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 0.6, 3.4), sharey=True, squeeze=False)
    for k, ax in enumerate(axes[0]):
        for i, (m, part) in enumerate(curves[curves.seed == k].groupby("method", sort=False)):
            ax.step(np.r_[0, part.spent], np.r_[np.nan, part.best], where="post", label=m,
                    lw=3.5 - 1.5 * min(i, 1), alpha=0.6 if i == 0 else 1.0)  # fmt: skip
        row = reach.iloc[k]
        ax.axhline(row.reference_best, color="k", ls=":", lw=1, label=f"{reference}'s best")
        if row.reached:
            ax.plot(row.challenger_steps, row.reference_best, "k*", ms=10, label="reached")
        ax.set(title=f"seed {row.seed}", xlabel="training steps spent")
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return fig
