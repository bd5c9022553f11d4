"""Hyperparameter search at a budget of training steps: nbhelpers.techniques.hpo.optuna_search (on
made-up learning curves) and nbhelpers.lessons.transformer_search (the character transformer as
the train-and-evaluate function), and notebook 15's bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lm_fixtures import tiny_corpus
from notebook_runner import assert_fails_in_validation, validation_error

from nbhelpers.core import text
from nbhelpers.core.params import ParameterError, UnknownParameterError
from nbhelpers.lessons import transformer_search as ts
from nbhelpers.techniques.hpo import optuna_search as osr

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "notebooks" / "15_transformer_search.ipynb"
SPACE = {
    "lr": {"low": 1e-4, "high": 3e-2, "log": True},
    "warmup_steps": {"low": 0, "high": 6, "int": True},
    "weight_decay": {"low": 0.0, "high": 0.3},
    "dropout": {"low": 0.0, "high": 0.3},
}


def curve(params: dict, seed: int, checkpoints: list):
    """A made-up learning curve: best near lr 5e-3, falling as 3 / sqrt(step)."""
    floor = 2 + (math.log10(params["lr"]) + 2.3) ** 2 + params["dropout"]
    for step in checkpoints:
        yield step, floor + 3 / math.sqrt(step) + params["warmup_steps"] / (10 * step)


def history(values: list[float], steps: list[int]) -> pd.DataFrame:
    """A made-up search table: trial values (NaN: not complete) and the steps each trained."""
    t = pd.DataFrame({"trial": range(len(values)), "value": values, "steps": steps})
    t["spent"] = t.steps.cumsum()
    t["best"] = t.value.cummin()
    return t


# ---------------------------------------------------------------------------------------------
# Checks: bad input names the parameter and what is allowed
# ---------------------------------------------------------------------------------------------


def test_space_is_normalised():
    out = osr.check_space("SPACE", SPACE)
    assert out["lr"] == {"low": 1e-4, "high": 3e-2, "log": True, "int": False}
    assert out["warmup_steps"] == {"low": 0, "high": 6, "log": False, "int": True}
    assert isinstance(out["warmup_steps"]["low"], int)


@pytest.mark.parametrize(
    "dim",
    [
        {"low": 0.3, "high": 0.1},  # low > high
        {"low": 0.1, "high": 0.1},  # empty
        {"low": 0.0, "high": 0.1, "log": True},  # log of 0
        {"low": 0.5, "high": 3, "int": True},  # int with a real bound
        {"low": 0.0},  # no high
        {"low": 0.0, "high": 1.0, "step": 0.1},  # unknown key
        {"low": "a", "high": 1.0},
        {"low": 0.0, "high": math.inf},
    ],
)
def test_bad_ranges_are_refused(dim):
    with pytest.raises(ParameterError, match="SPACE") as e:
        osr.check_space("SPACE", {**SPACE, "dropout": dim})
    assert "low < high" in str(e.value)


def test_an_empty_space_is_refused():
    with pytest.raises(ParameterError, match="SPACE"):
        osr.check_space("SPACE", {})


def test_rungs_are_checked():
    assert osr.check_rungs("RUNGS", [20, 60], 180, 3) == [20, 60]
    assert osr.check_rungs("RUNGS", [45], 180, 2) == [45]
    for bad in ([60, 20], [20, 20], [20, 200], [180], [20, 50], [], [20.0, 60.0], [0, 0], "20"):
        with pytest.raises(ParameterError, match="RUNGS") as e:
            osr.check_rungs("RUNGS", bad, 180, 3)
        assert "strictly increasing" in str(e.value) and "180" in str(e.value), bad


def test_budget_of_less_than_one_trial_is_refused():
    assert osr.check_budget("BUDGET_STEPS", 180, 180) == 180
    with pytest.raises(ParameterError, match="BUDGET_STEPS") as e:
        osr.check_budget("BUDGET_STEPS", 179, 180)
    assert "at least 180" in str(e.value)


def test_unknown_sampler_and_pruner_names_are_refused():
    with pytest.raises(ParameterError, match="pruner") as e:
        osr.make_pruner("median", [2, 6], 18, 3)
    assert all(p in str(e.value) for p in osr.PRUNERS)
    with pytest.raises(ParameterError, match="sampler"):
        osr.make_sampler("cmaes", 0)
    with pytest.raises(ParameterError, match="pruner"):
        osr.search(curve, SPACE, 18, 54, "tpe", "median", [2, 6])


def test_pruners_judge_at_the_rungs():
    asha = osr.make_pruner("asha", [20, 60], 180, 3)
    assert (asha._min_resource, asha._reduction_factor) == (20, 3)
    hb = osr.make_pruner("hyperband", [20, 60], 180, 3)
    assert (hb._min_resource, hb._max_resource, hb._reduction_factor) == (20, 180, 3)
    assert type(osr.make_pruner("none", [], 180, 3)).__name__ == "NopPruner"


# ---------------------------------------------------------------------------------------------
# Steps to reach, ratios
# ---------------------------------------------------------------------------------------------


def test_steps_to_reach_on_a_made_up_history():
    t = history([4.0, math.nan, 3.5, math.nan, 3.2], [100, 10, 100, 30, 100])
    assert list(t.spent) == [100, 110, 210, 240, 340]
    assert osr.steps_to_reach(t, 4.0) == 100
    assert osr.steps_to_reach(t, 3.9) == 210  # the pruned trials' steps count
    assert osr.steps_to_reach(t, 3.2) == 340
    assert osr.steps_to_reach(t, 3.19) is None
    assert osr.steps_to_reach(t, 100.0) == 100


def test_reach_table_ratio_and_censoring():
    ref = [history([4.0, 3.6, 3.8], [100] * 3), history([3.0, 3.9, 3.9], [100] * 3)]
    ch = [
        history([4.0, math.nan, math.nan, 3.55], [100, 10, 10, 100]),  # reaches 3.6 at 220
        history([3.5, math.nan, 3.1], [100, 30, 100]),  # never reaches 3.0
    ]
    r = osr.reach_table({"random": ref, "tpe": ch}, "random", "tpe", seeds=[7, 8])
    assert list(r.seed) == [7, 8]
    assert list(r.reference_best) == [3.6, 3.0] and list(r.reference_steps) == [200, 100]
    assert r.challenger_steps[0] == 220 and math.isnan(r.challenger_steps[1])
    assert list(r.reached) == [True, False] and list(r.budget) == [220, 230]
    assert r.ratio[0] == pytest.approx(220 / 200) and r.ratio[1] == pytest.approx(231 / 100)
    assert list(r.challenger_best) == [3.55, 3.1]


def test_search_target_is_censored_when_a_seed_never_reaches():
    reach = pd.DataFrame({"ratio": [0.3, 2.31], "reached": [True, False]})
    t = ts.search_target(reach, "tpe+asha", 230)
    assert t["measured"] == pytest.approx(1.305) and not t["met"] and t["censored"]
    assert t["note"].startswith("1/2 seeds reached within 230") and "never" in t["note"]
    ok = ts.search_target(pd.DataFrame({"ratio": [0.3, 0.5], "reached": [True, True]}), "x", 9)
    assert ok["met"] and ok["measured"] == pytest.approx(0.4)


# ---------------------------------------------------------------------------------------------
# search on made-up curves
# ---------------------------------------------------------------------------------------------


def test_random_search_trains_every_trial_to_the_end_within_the_budget():
    t = osr.search(curve, SPACE, 18, 54, "random", "none", [2, 6], 3, seed=1)
    assert list(t.state) == ["complete"] * 3 and list(t.steps) == [18] * 3
    assert list(t.spent) == [18, 36, 54] and list(t.trial) == [0, 1, 2]
    assert list(t.seed) == [10_000, 10_001, 10_002]
    assert t.value.tolist() == t["last"].tolist() and t.best.tolist() == t.value.cummin().tolist()
    assert t[["rung_2", "rung_6"]].notna().all().all()  # reported, never pruned


def test_a_budget_that_runs_out_mid_trial_cuts_it():
    t = osr.search(curve, SPACE, 18, 60, "random", "none", [2, 6], 3, seed=1)
    assert list(t.state) == ["complete"] * 3 + ["cut"] and list(t.steps) == [18, 18, 18, 6]
    assert t.spent.iloc[-1] == 60 and math.isnan(t.value.iloc[-1])


def test_tpe_with_asha_spends_exactly_its_budget_and_prunes_at_rungs():
    t = osr.search(curve, SPACE, 18, 90, "tpe", "asha", [2, 6], 3, seed=0, startup=3)
    assert t.steps.sum() == t.spent.iloc[-1] == 90
    assert set(t.state) <= set(osr.STATES) and "pruned" in set(t.state)
    assert set(t.loc[t.state == "pruned", "steps"]) <= {2, 6}
    assert set(t.loc[t.state == "complete", "steps"]) == {18}
    assert t.state.iloc[0] == "complete"  # ASHA keeps the first trial: best so far
    assert len(t) > 90 // 18


def test_same_seed_same_search_and_shared_start_up_trials():
    a = osr.search(curve, SPACE, 18, 90, "tpe", "asha", [2, 6], 3, seed=4, startup=3)
    b = osr.search(curve, SPACE, 18, 90, "tpe", "asha", [2, 6], 3, seed=4, startup=3)
    pd.testing.assert_frame_equal(a, b)
    r = osr.search(curve, SPACE, 18, 90, "random", "none", [2, 6], 3, seed=4)
    keys = list(SPACE) + ["seed"]
    pd.testing.assert_frame_equal(a[keys].head(3), r[keys].head(3))  # common random numbers
    other = osr.search(curve, SPACE, 18, 90, "random", "none", [2, 6], 3, seed=5)
    assert not np.allclose(other.lr.head(3), r.lr.head(3))


def test_hyperband_runs_and_spends_its_budget():
    t = osr.search(curve, SPACE, 18, 72, "tpe", "hyperband", [2, 6], 3, seed=0, startup=3)
    assert t.spent.iloc[-1] == 72 and set(t.state) <= set(osr.STATES)


def test_a_diverged_trial_counts_its_steps_and_gives_no_value():
    def fit(params, seed, checkpoints):
        if params["lr"] > 1e-3:
            yield 2, 5.0
            yield 3, math.nan  # between checkpoints: allowed for a diverged run
            return
        yield from curve(params, seed, checkpoints)

    t = osr.search(fit, SPACE, 18, 54, "random", "none", [2, 6], 3, seed=1)
    bad = t[t.lr > 1e-3]
    assert len(bad) and set(bad.state) == {"diverged"} and set(bad.steps) == {3}
    assert bad.value.isna().all() and t.spent.iloc[-1] >= 54


def test_a_fit_that_yields_the_wrong_steps_is_an_error():
    def wrong(params, seed, checkpoints):
        yield from ((c + 1, 1.0) for c in checkpoints)

    with pytest.raises(ValueError, match="checkpoints"):
        osr.search(wrong, SPACE, 18, 54, "random", "none", [2, 6], 3)

    def short(params, seed, checkpoints):
        yield checkpoints[0], 1.0

    with pytest.raises(ValueError, match="stopped"):
        osr.search(short, SPACE, 18, 54, "random", "none", [2, 6], 3)


def test_a_pruned_generator_is_closed():
    closed = []

    def fit(params, seed, checkpoints):
        try:
            yield from curve(params, seed, checkpoints)
        finally:
            closed.append(seed)

    t = osr.search(fit, SPACE, 18, 90, "tpe", "asha", [2, 6], 3, seed=0, startup=3)
    assert sorted(closed) == sorted(t.seed)


def test_compute_curves_and_plot():
    searches = {"random": [history([4.0, 3.6], [10, 10])], "tpe": [history([3.5], [10])]}
    c = osr.compute_curves(searches)
    assert list(c.columns) == ["method", "seed", "trial", "spent", "best"]
    assert c.values.tolist() == [["random", 0, 0, 10, 4.0], ["random", 0, 1, 20, 3.6],
                                 ["tpe", 0, 0, 10, 3.5]]  # fmt: skip
    fig = osr.plot_compute(searches, "random", "tpe", seeds=[3])
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "seed 3"


# ---------------------------------------------------------------------------------------------
# The lesson: the character transformer as a train-and-evaluate function
# ---------------------------------------------------------------------------------------------

SMALL = {"context": 16, "width": 16, "depth": 1, "heads": 2}
PARAMS = {"lr": 0.01, "warmup_steps": 2, "weight_decay": 0.1, "dropout": 0.1}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> text.Corpus:
    return tiny_corpus(tmp_path_factory)


@pytest.mark.parametrize(
    "space,where",
    [
        ({k: SPACE[k] for k in ("lr", "warmup_steps", "dropout")}, "exactly the keys"),
        ({**SPACE, "warmup_steps": {"low": 0, "high": 30, "int": True}}, "within [0, 18]"),
        ({**SPACE, "warmup_steps": {"low": 0, "high": 6}}, "integer range"),
        ({**SPACE, "lr": {"low": 0.1, "high": 2.0}}, "within (0, 1]"),
        ({**SPACE, "dropout": {"low": 0.0, "high": 1.0}}, "within [0, 1)"),
        ({**SPACE, "weight_decay": {"low": 0, "high": 1, "int": True}}, "real range"),
    ],
)
def test_lm_space_is_checked(space, where):
    with pytest.raises(ParameterError, match="SPACE") as e:
        ts.check_lm_space("SPACE", space, 18)
    assert where in str(e.value)


def test_lm_fit_yields_at_the_checkpoints_and_a_pruned_run_is_the_full_runs_prefix(corpus):
    fit = ts.LMFit(corpus, SMALL, 12, 4, 4)
    full = list(fit(PARAMS, 3, [2, 6, 12]))
    assert [s for s, _ in full] == [2, 6, 12] and all(math.isfinite(v) for _, v in full)
    part = list(fit(PARAMS, 3, [2, 6]))
    assert part == full[:2]  # the schedule spans 12 steps either way
    assert fit.best["value"] == full[-1][1] and fit.best["seed"] == 3
    model = ts.CharTransformer(corpus.vocab.size, **SMALL)
    model.load_state_dict(fit.best["state_dict"])
    assert fit.score(model) == pytest.approx(full[-1][1], abs=1e-9)
    other = list(fit({**PARAMS, "lr": 0.001}, 3, [2, 6, 12]))
    assert other[-1][1] != full[-1][1]


def test_lm_fit_keeps_only_the_best_complete_model(corpus):
    fit = ts.LMFit(corpus, SMALL, 8, 4, 4)
    a = list(fit({**PARAMS, "lr": 0.02}, 0, [8]))[-1][1]
    b = list(fit({**PARAMS, "lr": 0.0001}, 1, [8]))[-1][1]
    assert a < b and fit.best["value"] == a and fit.best["params"]["lr"] == 0.02


def test_lm_fit_reports_a_diverged_run(corpus, monkeypatch):
    calls = []
    real = ts.F.cross_entropy

    def loss_nan_at_step_5(*args, **kwargs):
        out = real(*args, **kwargs)
        if "reduction" in kwargs:  # the validation scores (measure.bpc), not a training step
            return out
        calls.append(1)
        return out * math.nan if len(calls) == 5 else out

    monkeypatch.setattr(ts.F, "cross_entropy", loss_nan_at_step_5)
    fit = ts.LMFit(corpus, SMALL, 8, 4, 4)
    out = list(fit(PARAMS, 0, [2, 8]))
    assert out[0][0] == 2 and math.isfinite(out[0][1])
    assert out[1][0] == 5 and math.isnan(out[1][1]) and len(out) == 2
    assert fit.best is None


def test_cached_search_round_trips(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("NBHELPERS_CACHE_DIR", str(tmp_path))
    space = ts.check_lm_space("SPACE", SPACE, 12)
    args = (corpus, SMALL, space, 12, 36, 4, 4, "tpe", "asha", [2, 6], 3, 0, 2)
    a = ts.cached_search(*args)
    b = ts.cached_search(*args)
    assert not a.from_cache and b.from_cache and a.method == "tpe+asha"
    pd.testing.assert_frame_equal(a.trials, b.trials, check_dtype=False)
    assert a.best == b.best and a.best["value"] == a.trials.value.min()
    fit = ts.LMFit(corpus, SMALL, 12, 4, 4)
    assert fit.score(b.model) == pytest.approx(a.best["value"], abs=1e-9)
    methods = ts.method_table({"tpe+asha": [a]})
    assert methods.loc["tpe+asha", "steps_spent"] == 36
    assert methods.loc["tpe+asha", "trials"] == len(a.trials)


def _run(method: str, values: list, rungs: dict) -> ts.SearchRun:
    t = history(values, [18] * len(values)).assign(state="complete", **rungs)
    return ts.SearchRun(method, 0, t, None, None, False)


def test_rung_agreement_on_made_up_trials():
    same = _run("random", [3.0, 3.5, 4.0], {"rung_2": [5.0, 5.5, 6.0]})
    flipped = _run("random", [3.0, 3.5, 4.0], {"rung_2": [6.0, 5.5, 5.0]})
    r = ts.rung_agreement([same, flipped], [2], 3)
    assert r.spearman_seeds[0] == [1.0, -1.0] and r.spearman[0] == 0.0
    assert r.best_kept[0] == 1 and r.seeds[0] == 2  # kept: the best ceil(3/3) = 1 at the rung


# ---------------------------------------------------------------------------------------------
# The notebook's bad input stops it in its validation cell
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override,name,allowed",
    [
        ({"BUDGET_STEPS": 179}, "BUDGET_STEPS", "at least 180"),
        ({"RUNGS": [60, 20]}, "RUNGS", "strictly increasing"),
        ({"RUNGS": [20, 60, 180]}, "RUNGS", "below the steps of a trial (180)"),
        ({"RUNGS": [20, 50]}, "RUNGS", "each eta = 3 times"),
        ({"PRUNER": "median"}, "PRUNER", "asha"),
        ({"ETA": 1}, "ETA", ">= 2"),
        ({"TPE_STARTUP": 0}, "TPE_STARTUP", ">= 1"),
        ({"SPACE": {**SPACE, "lr": {"low": 0.1, "high": 0.01}}}, "SPACE", "low < high"),
        (
            {"SPACE": {**SPACE, "warmup_steps": {"low": 0, "high": 500, "int": True}}},
            "SPACE",
            "within [0, 180]",
        ),
        ({"HEADS": 3}, "HEADS", "divisor"),
    ],
)
def test_bad_input_stops_the_notebook_in_validation(override, name, allowed, tmp_path):
    err = validation_error(NB, tmp_path, **override)
    assert isinstance(err, ParameterError) and name in str(err), repr(err)
    assert allowed in str(err), str(err)


def test_an_unknown_parameter_stops_the_notebook(tmp_path):
    err = validation_error(NB, tmp_path, BUDGET=100)
    assert isinstance(err, UnknownParameterError) and "BUDGET_STEPS" in str(err), repr(err)


def test_a_bad_text_path_stops_the_notebook(tmp_path):
    assert_fails_in_validation(NB, tmp_path, "TEXT_PATH", TEXT_PATH=str(tmp_path / "missing.txt"))
