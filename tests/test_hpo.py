"""Unit tests of nbhelpers.techniques.hpo: the space and its conversions, trials to target, the
lookup
objective and the search methods on it, the summaries, the estimator, the backends."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nbhelpers.core.params import ParameterError
from nbhelpers.lessons import tuning
from nbhelpers.techniques import hpo

SPACE = {
    "lr": {"low": 1e-4, "high": 1e-1, "log": True},
    "hidden": {"low": 32, "high": 512, "log": True, "int": True},
    "dropout": {"low": 0.0, "high": 0.5},
    "batch_size": {"values": [32, 128]},
}


# --- the space -------------------------------------------------------------------------------


def test_check_space_normalises():
    s = hpo.check_space("SPACE", SPACE)
    assert s["lr"] == {"low": 1e-4, "high": 0.1, "log": True, "int": False}
    assert s["hidden"] == {"low": 32, "high": 512, "log": True, "int": True}
    assert s["dropout"] == {"low": 0.0, "high": 0.5, "log": False, "int": False}
    assert s["batch_size"] == {"values": [32, 128]}
    assert hpo.check_space("SPACE", hpo.MLP_SPACE).keys() == hpo.MLP_SPACE.keys()


@pytest.mark.parametrize(
    "bad",
    [
        {},
        [],
        None,
        "lr",
        {"learning_rate": {"low": 1e-4, "high": 1e-1}},  # unknown hyperparameter
        {"lr": {"low": 1e-1, "high": 1e-4}},  # low >= high
        {"lr": {"low": 0.0, "high": 1e-1, "log": True}},  # log needs low > 0
        {"lr": {"low": 1e-4}},  # no high
        {"lr": {"low": "a", "high": 1.0}},
        {"lr": {"low": 1e-4, "high": math.inf}},
        {"lr": {"low": 1e-4, "high": 1e-1, "scale": "log"}},  # unknown key
        {"hidden": {"low": 32.5, "high": 64, "int": True}},
        {"batch_size": {"values": []}},
        {"batch_size": {"values": "32"}},
        {"batch_size": {"values": [32], "low": 1}},
        {"lr": 0.01},
    ],
)
def test_check_space_rejects_empty_or_malformed(bad):
    with pytest.raises(ParameterError) as e:
        hpo.check_space("SPACE", bad)
    assert e.value.name == "SPACE"


def test_merge_space_replaces_adds_removes():
    s = hpo.merge_space(
        hpo.MLP_SPACE,
        {
            "lr": {"low": 1e-3, "high": 1e-2, "log": True},
            "batch_size": None,
            "dropout": {"low": 0.0, "high": 0.5},
        },
    )
    assert list(s) == ["lr", "hidden", "weight_decay", "dropout"]
    assert s["lr"]["low"] == 1e-3
    with pytest.raises(ParameterError, match="SPACE"):
        hpo.merge_space({"lr": SPACE["lr"]}, {"lr": None})  # nothing left
    with pytest.raises(ParameterError, match="SPACE"):
        hpo.merge_space(hpo.MLP_SPACE, ["lr"])


def test_grid_values_exact():
    s = hpo.check_space("SPACE", SPACE)
    g = hpo.to_grid(s, 4)
    assert g["lr"] == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])
    assert g["module__width"] == [32, 81, 203, 512]
    assert g["module__dropout"] == pytest.approx([0.0, 1 / 6, 1 / 3, 0.5])
    assert g["batch_size"] == [32, 128]
    assert hpo.to_grid(s, {"lr": 2, "hidden": 3, "dropout": 2}, rename=False)["hidden"] == [
        32,
        128,
        512,
    ]


def test_conversions_agree_on_bounds_and_scale():
    """Grid ends, distribution supports and skopt dimensions share the same bounds and priors."""
    s = hpo.check_space("SPACE", SPACE)
    grid, dists, dims = hpo.to_grid(s, 5), hpo.to_distributions(s), hpo.to_skopt(s)
    assert (
        set(grid)
        == set(dists)
        == set(dims)
        == {"lr", "module__width", "module__dropout", "batch_size"}
    )
    rng = np.random.RandomState(0)
    for name, key in [("lr", "lr"), ("hidden", "module__width"), ("dropout", "module__dropout")]:
        d = s[name]
        assert grid[key][0] == pytest.approx(d["low"]) and grid[key][-1] == pytest.approx(d["high"])
        assert (dims[key].low, dims[key].high) == pytest.approx((d["low"], d["high"]))
        assert dims[key].prior == ("log-uniform" if d["log"] else "uniform")
        x = np.asarray(dists[key].rvs(size=4000, random_state=rng), dtype=float)
        assert x.min() >= d["low"] and x.max() <= d["high"]
        # the draws span the range: close to both ends
        width = (np.log(d["high"]) - np.log(d["low"])) if d["log"] else d["high"] - d["low"]
        lo = (np.log(x.min()) - np.log(d["low"])) if d["log"] else x.min() - d["low"]
        hi = (np.log(d["high"]) - np.log(x.max())) if d["log"] else d["high"] - x.max()
        assert lo < 0.02 * width and hi < 0.02 * width
    assert dists["batch_size"] == [32, 128] and list(dims["batch_size"].categories) == [32, 128]
    # log-uniform: about a third of the draws per decade of [1e-4, 1e-1]
    x = dists["lr"].rvs(size=6000, random_state=rng)
    share = np.histogram(np.log10(x), bins=[-4, -3, -2, -1])[0] / len(x)
    assert share == pytest.approx([1 / 3] * 3, abs=0.03)
    # integers stay integers, within bounds, on both scales
    w = dists["module__width"].rvs(size=500, random_state=rng)
    assert w.dtype.kind == "i" and isinstance(dists["module__width"].rvs(random_state=rng), int)
    assert dims["module__width"].rvs(200, random_state=0) == pytest.approx(
        [int(v) for v in dims["module__width"].rvs(200, random_state=0)]
    )


def test_friendly_inverts_param_names():
    assert hpo.friendly(
        {"module__width": np.int64(64), "optimizer__weight_decay": 1e-4, "lr": 0.1}
    ) == {"hidden": 64, "weight_decay": 1e-4, "lr": 0.1}
    assert set(hpo.describe_space(hpo.check_space("S", SPACE)).index) == set(SPACE)


# --- trials to target ------------------------------------------------------------------------


def test_best_so_far_and_trials_to_target():
    h = [0.5, 0.7, 0.6, 0.9, 0.8]
    assert hpo.best_so_far(h).tolist() == [0.5, 0.7, 0.7, 0.9, 0.9]
    assert hpo.trials_to_target(h, 0.7) == 2
    assert hpo.trials_to_target(h, 0.85) == 4
    assert hpo.trials_to_target(h, 0.5) == 1
    assert hpo.trials_to_target(h, 0.95) is None
    assert hpo.trials_to_target([], 0.1) is None


def test_trials_to_target_table_known_history():
    hist = {
        "a": [[0.1, 0.9, 0.2], [0.95, 0.0, 0.0], [0.0, 0.0, 0.0, 0.91]],
        "b": [[0.0, 0.0], [0.0, 0.9]],
    }
    t = hpo.trials_to_target_table(hist, 0.9, limits={"a": 2.5, "b": 5})
    assert t.loc["a", "per_seed"] == [2, 1, 4]
    assert t.loc["a", "mean_trials"] == pytest.approx(7 / 3)
    assert (
        t.loc["a", "median_trials"] == 2
        and t.loc["a", "max_trials"] == 4
        and t.loc["a", "min_trials"] == 1
    )
    assert t.loc["a", "reached"] == 3 and bool(t.loc["a", "met"]) is True
    # a seed that never reaches the target counts as its budget + 1, and the target is then missed
    assert t.loc["b", "per_seed"] == [None, 2]
    assert t.loc["b", "mean_trials"] == pytest.approx((3 + 2) / 2)
    assert t.loc["b", "reached"] == 1 and bool(t.loc["b", "met"]) is False
    assert t.loc["a", "std_trials"] == pytest.approx(np.std([2, 1, 4], ddof=1))


def test_budget_table_known_histories():
    t = hpo.budget_table({"grid": [[0.1, 0.5], [0.5, 0.2]], "random": [[0.3, 0.2], [0.1, 0.9]]})
    assert t.loc["grid"].tolist() == [0.5, 0.5, 0.5]
    assert t.loc["random"].tolist() == pytest.approx([0.6, 0.3, 0.9])
    assert list(t.columns) == [
        "best after budget (mean)",
        "best after budget (min)",
        "best after budget (max)",
    ]


def test_curves_frame_shape():
    df = hpo.curves_frame({"m": [[0.1, 0.3, 0.2], [0.2, 0.1, 0.4]]})
    assert len(df) == 6 and df[df.seed == 0]["best"].tolist() == [0.1, 0.3, 0.3]


# --- the lookup objective and the search methods on it ---------------------------------------


@pytest.fixture(scope="module")
def lookup():
    space = hpo.check_space(
        "S", {"lr": SPACE["lr"], "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True}}
    )
    axes = {
        "lr": hpo.dim_values(space["lr"], 16),
        "weight_decay": hpo.dim_values(space["weight_decay"], 7),
    }
    lr = np.log10(axes["lr"])[:, None]
    scores = 0.9 - 0.05 * (lr + 2.0) ** 2 + 0.001 * np.arange(7)[None, :]
    return hpo.LookupObjective(space, axes, scores)


def test_lookup_snaps_to_nearest_cell_in_log_space(lookup):
    assert lookup.size == 112 and lookup.best == pytest.approx(lookup.scores.max())
    assert lookup.cell({"lr": 1e-2, "weight_decay": 1e-6}) == (10, 0)
    assert lookup.cell({"lr": 1.2e-2, "weight_decay": 1.5e-2}) == (
        10,
        6,
    )  # beyond the range: the edge
    assert lookup({"lr": 1e-4, "weight_decay": 1e-2}) == pytest.approx(lookup.scores[0, 6])


def test_lookup_from_results_roundtrip(lookup):
    import pandas as pd

    rows = [
        {"lr": a, "weight_decay": b, "mean_cv": lookup.scores[i, j]}
        for i, a in enumerate(lookup.axes["lr"])
        for j, b in enumerate(lookup.axes["weight_decay"])
    ]
    again = hpo.LookupObjective.from_results(lookup.space, lookup.axes, pd.DataFrame(rows))
    assert np.array_equal(again.scores, lookup.scores)
    with pytest.raises(ValueError):
        hpo.LookupObjective.from_results(lookup.space, lookup.axes, pd.DataFrame(rows[:-1]))


def test_search_histories_repeat_and_find_the_optimum(lookup):
    r1, p1 = hpo.random_history(lookup, 30, seed=3)
    r2, _ = hpo.random_history(lookup, 30, seed=3)
    assert r1 == r2 and len(r1) == 30
    assert all(1e-4 <= p["lr"] <= 1e-1 for p in p1)
    assert hpo.random_history(lookup, 10, seed=3)[0] == r1[:10]  # a shorter run is a prefix
    g, gp = hpo.grid_history(lookup, 4, seed=0)
    assert (
        len(g) == 16
        and len({lookup.cell(p)[0] for p in gp}) == 4
        and max(g) == pytest.approx(lookup.best)
    )
    tpe = hpo.tpe_history(lookup, 12, seed=0, initial=4)
    assert len(tpe) == 12 and tpe == hpo.tpe_history(lookup, 12, seed=0, initial=4)


def test_shifted_grids_every_offset(lookup):
    # 16 learning rates, 4-value grids spaced 4 cells apart: offsets 0..3
    t = tuning.shifted_grids(lookup, 4, [0, 6], target=lookup.best - 0.001)
    assert t["offset"].tolist() == [0, 1, 2, 3] and len(t["lr values"][0]) == 4
    expected = [lookup.scores[np.ix_([o, o + 4, o + 8, o + 12], [0, 6])].max() for o in range(4)]
    assert t["best after budget"].tolist() == pytest.approx(expected)
    assert t["reaches target"].tolist() == [e >= lookup.best - 0.001 for e in expected]


def test_gp_history_runs(lookup):
    scores, res = hpo.gp_history(lookup, 8, seed=0, initial=3)
    assert len(scores) == 8 and scores == pytest.approx([-v for v in res.func_vals])
    assert max(scores) > lookup.scores.mean()


# --- the summaries: facts of a run, by name ---------------------------------------------------


def _values(facts):
    """The value column of a fact table, after checking that its contexts display unabridged."""
    assert facts["context"].str.len().max() <= 50, facts["context"].tolist()  # pandas cuts at 50
    return facts["value"]


def test_fact_table_rounds_for_reading_and_refuses_repeats():
    t = tuning.facts_of(
        [
            ("a", 0.123456789, "x"),
            ("b", np.int64(3), ""),
            ("c", True, ""),
            ("d", "lr", ""),
            ("e", float("nan"), ""),
        ]
    )
    assert list(t.columns) == ["value", "unit", "context"] and t.index.name == "fact"
    assert t.loc["a", "value"] == 0.1235 and t.loc["b", "value"] == 3
    assert t.loc["c", "value"] is True and t.loc["d", "value"] == "lr"
    with pytest.raises(ValueError):
        tuning.facts_of([("a", 1, ""), ("a", 2, "")])


def test_target_cells_share_and_geometric_mean(lookup):
    rows = dict(
        (name, value) for name, value, _ in tuning.target_cells(lookup, lookup.best - 0.0025)
    )
    within = int((lookup.scores >= lookup.best - 0.0025).sum())
    assert rows["cells within the target"] == within >= 1
    assert rows["expected trials at that share"] == pytest.approx(lookup.size / within)


def _grid_results():
    import pandas as pd

    return pd.DataFrame(
        {
            "lr": [0.1, 0.1, 0.01, 0.01],
            "hidden": [32, 64, 32, 64],
            "mean_cv": [0.70, 0.80, 0.85, 0.84],
            "std_cv": [0.01, 0.01, 0.02, 0.01],
        }
    )


def test_grid_summary_known_table():
    import pandas as pd

    importance = pd.Series({"lr": 0.05, "hidden": 0.01})
    f = _values(
        tuning.grid_summary(_grid_results(), 0.86, importance, seconds_per_trial=0.5, folds=3)
    )
    assert f["configurations"] == 4 and f["fits"] == 13
    assert f["winner's CV accuracy"] == 0.85 and f["winner's fold std"] == pytest.approx(2.0)
    assert f["gap to the runner-up"] == pytest.approx(1.0)
    assert f["tied with the winner"] == 2  # 0.85 and 0.84 are within 0.02 of the winner
    assert f["test minus CV accuracy"] == pytest.approx(1.0)
    assert (f["most important"], f["least important"]) == ("lr", "hidden")
    assert f["values of the most important"] == 2
    assert f["a grid of 10^6 trials"] == pytest.approx(1e6 * 0.5 / 86400, rel=1e-3)


def test_random_summary_known_runs(lookup):
    import pandas as pd

    goal = lookup.best - 0.0025
    grid_runs, random_runs = [[0.1, lookup.best], [lookup.best, 0.1]], [[0.1, 0.2], [goal, 0.1]]
    ttt = hpo.trials_to_target_table(
        {"random": [[0.1, goal], [0.0] * 3]}, goal, limits={"random": lookup.size / 4}
    )
    placements = pd.DataFrame({"reaches target": [True, False, False]})
    spread = pd.Series({"lr": 0.3, "weight_decay": 0.006})
    f = _values(
        tuning.random_summary(
            lookup, goal, grid_runs, random_runs, placements, ttt, spread, met=False
        )
    )
    assert f["grid contains the table's best cell"] is True
    assert f["grid placements reaching the target"] == 1
    assert f["random seeds reaching the target in the budget"] == 1
    assert f["grid minus random after the budget"] == pytest.approx(
        100 * (lookup.best - (0.2 + goal) / 2), rel=1e-3
    )
    assert f["range along lr"] == 30.0 and f["range along weight_decay"] == 0.6
    assert f["random: mean trials to the target"] == 3.0 and f["random: worst seed"] == 4.0
    assert f["random: seeds reaching the target"] == 1 and f["target met"] is False


def test_bayes_summary_compares_model_with_baseline(lookup):
    goal = lookup.best - 0.0025
    runs = {"GP": [[0.1, goal, 0.1], [goal, 0.1, 0.1]], "random": [[0.1, 0.1, goal], [0.1] * 3]}
    ttt = hpo.trials_to_target_table(runs, goal, limits={"GP": 2, "random": 3})
    results = _grid_results()
    f = _values(
        tuning.bayes_summary(
            lookup,
            goal,
            runs,
            ttt,
            {"GP": 0.2, "random": 0.001},
            results,
            {"GP": True, "random": False},
            model="GP",
        )
    )
    assert f["GP needs fewer trials than random"] is True  # 1.5 against (3 + 4) / 2
    assert f["GP minus random: mean trials"] == pytest.approx(1.5 - 3.5)
    assert f["GP minus random: worst seed"] == pytest.approx(2 - 4)
    assert f["GP: seconds per trial"] == 0.2 and f["random: target met"] is False
    assert f["BayesSearchCV winner's fold std"] == pytest.approx(2.0)
    assert f["fold std above the target margin"] is True  # 2 points > 0.25 points


def test_plots_draw():
    import matplotlib.pyplot as plt
    import pandas as pd

    trials = pd.DataFrame({"n=2": [2, 4], "n=10": [10, 100]}, index=pd.Index([1, 2], name="d"))
    fig = tuning.plot_grid_cost(trials, 0.5)
    assert len(fig.axes[0].lines) == 3  # two grids and the one-hour line
    x = np.linspace(-4, -1, 8)
    fine = np.linspace(-4, -1, 50)
    fig2 = tuning.plot_surrogate(
        x, -np.cos(x), [0, 5], fine, np.zeros(50), np.ones(50), np.abs(np.sin(fine)), "log10 lr"
    )
    assert len(fig2.axes) == 2 and "2 trials" in fig2.axes[0].get_title()
    plt.close("all")


# --- the package layout ------------------------------------------------------------------------


def test_rooms_hold_what_they_say():
    from nbhelpers.techniques.hpo import backends, comparison, estimator, exhaustive, plots, space

    assert space.MLP_SPACE is hpo.MLP_SPACE and space.to_skopt is hpo.to_skopt
    assert (
        estimator.make_estimator is hpo.make_estimator and estimator.flat_subset is hpo.flat_subset
    )
    assert backends.backend is hpo.backend and backends.check_scheduler is hpo.check_scheduler
    assert comparison.LookupObjective is hpo.LookupObjective
    assert exhaustive.grid_table is hpo.grid_table and plots.heatmap is hpo.heatmap
    # lesson-only tables and plots live in the lesson module, not among the technique names
    for name in ("shifted_grids", "plot_grid_cost", "plot_surrogate"):
        assert not hasattr(hpo, name) and callable(getattr(tuning, name))
    assert all(hasattr(hpo, name) for name in hpo.__all__)


# --- the estimator ---------------------------------------------------------------------------


def test_estimator_is_a_seeded_sklearn_estimator():
    from sklearn.base import clone

    est = hpo.make_estimator(64, 10, epochs=2, seed=5, lr=0.01, hidden=30)
    assert (
        est.module__width == 30 and est.lr == 0.01 and est.random_state == 5 and est.max_epochs == 2
    )
    c = clone(est).set_params(**{"module__width": 12, "optimizer__weight_decay": 1e-3})
    assert isinstance(c, hpo.SeededNet) and c.module__width == 12 and c.random_state == 5
    m = hpo.WidthMLP(64, 30)
    assert [p.shape[0] for p in m.parameters() if p.dim() == 2] == [30, 10, 10]
    with pytest.raises(ParameterError):
        hpo.make_estimator(64, learning_rate=0.1)


def test_estimator_fits_repeat_exactly():
    rng = np.random.RandomState(0)
    X = rng.rand(120, 16).astype(np.float32)
    y = (X[:, 0] > 0.5).astype(np.int64)
    a = hpo.make_estimator(16, 2, epochs=2, seed=1, hidden=12).fit(X, y).predict_proba(X)
    b = hpo.make_estimator(16, 2, epochs=2, seed=1, hidden=12).fit(X, y).predict_proba(X)
    assert np.array_equal(a, b)


def test_flat_subset_is_stratified():
    X = np.arange(200 * 4, dtype=np.float32).reshape(200, 1, 2, 2)
    y = np.repeat(np.arange(10), 20)
    Xs, ys = hpo.flat_subset(X, y, 50, seed=0)
    assert Xs.shape == (50, 4) and np.bincount(ys).tolist() == [5] * 10
    assert hpo.flat_subset(X, y, 0)[0].shape == (200, 4)


def test_cached_results(tmp_path: Path, monkeypatch):
    import pandas as pd

    monkeypatch.setenv("NBHELPERS_CACHE_DIR", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return pd.DataFrame({"lr": [0.1, 0.01], "mean_cv": [0.5, 0.8]})

    a, hit_a = hpo.cached_results({"k": 1}, compute)
    b, hit_b = hpo.cached_results({"k": 1}, compute)
    assert (hit_a, hit_b) == (False, True) and len(calls) == 1 and a.equals(b)
    assert a.equals(compute()) and list(tmp_path.glob("hpo-*.json"))  # the project's cache files


def test_grid_and_curves_share_one_set_of_fits(tmp_path: Path, monkeypatch):
    """grid_table scores what GridSearchCV scores, exactly; curve_table's last epoch is the same
    score from the same (cached) fits; the per-epoch held-out passes leave the training alone."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    monkeypatch.setenv("NBHELPERS_CACHE_DIR", str(tmp_path))
    rng = np.random.RandomState(0)
    X = rng.rand(120, 16).astype(np.float32)
    y = (X[:, 0] + 0.3 * rng.rand(120) > 0.6).astype(np.int64)
    est = hpo.make_estimator(16, 2, epochs=4, seed=3, hidden=12, batch_size=16)
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    dims = {"lr": {"low": 1e-3, "high": 0.3, "log": True}, "weight_decay": {"values": [0, 0.1]}}
    space = hpo.check_space("SPACE", dims)
    points = {"lr": 3, "weight_decay": 2}
    search = GridSearchCV(est, hpo.to_grid(space, points), cv=cv, scoring="accuracy", refit=False)
    expected = hpo.results_table(search.fit(X, y))
    with hpo.backend("loky", 1):
        table, objective, hit = hpo.grid_table(est, X, y, space, points, cv, {"k": 1})
        curves, curve_obj, curve_hit = hpo.curve_table(est, X, y, space, points, cv, {"k": 1})
    assert (hit, curve_hit) == (False, True)  # one cache entry, one set of fits
    cols = ["trial", "lr", "weight_decay", "mean_cv"]
    assert table[cols].equals(expected[cols])
    assert np.allclose(table["std_cv"], expected["std_cv"], rtol=0, atol=1e-12)
    assert (table["fit_seconds"] > 0).all()
    assert np.array_equal(curve_obj.curves[..., -1], objective.scores)
    assert curves["epoch"].max() == 4 and len(curves) == 6 * 4
    assert len(set(np.round(expected["mean_cv"], 6))) > 2  # the grid tells its cells apart


def test_table_config_is_the_key_both_notebooks_share():
    key = hpo.table_config("mnist", 0, 1000, 5, 3, "cpu")
    assert key == {
        "dataset": "mnist",
        "seed": 0,
        "subset": 1000,
        "epochs": 5,
        "folds": 3,
        "device": "cpu",
        "defaults": hpo.DEFAULTS,
        "version": 1,
    }


# --- backends ------------------------------------------------------------------------------


def _tiny_search():
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    rng = np.random.RandomState(0)
    X = rng.rand(90, 8).astype(np.float32)
    y = (X[:, 0] > 0.5).astype(np.int64)
    est = hpo.make_estimator(8, 2, epochs=1, seed=0, hidden=6)
    return (
        GridSearchCV(est, {"lr": [0.01, 0.1]}, cv=StratifiedKFold(3, shuffle=True, random_state=0)),
        X,
        y,
    )


def test_dask_local_cluster_matches_sequential():
    """The local default: one worker process per job, one torch thread in each, same scores."""
    from distributed import default_client

    search, X, y = _tiny_search()
    with hpo.backend("loky", 1) as where:
        seq = search.fit(X, y).cv_results_["mean_test_score"]
    assert where["backend"] == "loky"
    search, X, y = _tiny_search()
    with hpo.backend("dask", 2) as where:
        dsk = search.fit(X, y).cv_results_["mean_test_score"]
        threads = default_client().run(_torch_threads)
        pids = default_client().run(os.getpid)
    assert where["backend"] == "dask" and where["scheduler"] and where["workers"] == 2
    assert list(threads.values()) == [1, 1] and os.getpid() not in pids.values()
    assert np.array_equal(seq, dsk)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


@pytest.mark.cluster
def test_search_on_separate_scheduler_and_workers(tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1, started as on a remote
    cluster: the search runs there and finds what the local run finds for the same seed."""
    search, X, y = _tiny_search()
    with hpo.backend("loky", 1):
        local = search.fit(X, y)
    dask_cli = str(Path(sys.executable).with_name("dask"))
    info = tmp_path / "scheduler.json"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [
        subprocess.Popen(
            [
                dask_cli,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(info),
            ],
            **quiet,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(info.read_text())["address"]
        procs += [
            subprocess.Popen(
                [
                    dask_cli,
                    "worker",
                    address,
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--local-directory",
                    str(tmp_path / f"w{i}"),
                ],
                **quiet,
            )
            for i in range(2)
        ]
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
            assert os.getpid() not in c.run(os.getpid).values()
        search, X, y = _tiny_search()
        with hpo.backend("dask", 2, address, timeout=10.0) as where:
            remote = search.fit(X, y)
        assert where["scheduler"] == address and where["workers"] == 2
        assert remote.best_params_ == local.best_params_
        assert np.array_equal(
            remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"]
        )
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


class _FakeClient:
    def __init__(self, workers: dict):
        self.workers = workers

    def run(self, fn):
        return self.workers


def test_check_versions_names_the_worker_and_the_package():
    here = hpo.package_versions()
    assert here["nbhelpers"] != "not installed" and here["torch"].startswith("2.")
    assert hpo.check_versions(_FakeClient({"tcp://a:1": here})) == {"tcp://a:1": here}
    old = {**here, "torch": "2.0.0", "nbhelpers": "not installed"}
    with pytest.raises(ParameterError, match="DASK_SCHEDULER") as e:
        hpo.check_versions(_FakeClient({"tcp://a:1": here, "tcp://b:2": old}), address="tcp://s:1")
    msg = str(e.value)
    assert "tcp://b:2 has torch 2.0.0" in msg and "nbhelpers not installed" in msg
    assert "tcp://a:1" not in msg and "tcp://s:1" in msg
    with pytest.raises(ParameterError, match="at least one worker"):
        hpo.check_versions(_FakeClient({}))


def test_package_versions_runs_without_nbhelpers():
    """The probe shipped to workers is a copy with no reference to nbhelpers' modules."""
    import cloudpickle

    from nbhelpers.techniques.hpo.backends import _by_value

    blob = cloudpickle.dumps(_by_value(hpo.package_versions))
    assert b"nbhelpers.techniques.hpo" not in blob
    assert cloudpickle.loads(blob)() == hpo.package_versions()


@pytest.mark.parametrize("name,n_jobs,param", [("spark", 1, "BACKEND"), ("loky", 0, "N_JOBS")])
def test_backend_rejects_bad_choice(name, n_jobs, param):
    with pytest.raises(ParameterError, match=param):
        with hpo.backend(name, n_jobs):
            pass


@pytest.mark.parametrize(
    "address", ["nonsense", "http://host:8786", "tcp://host", "tcp://host:port", 8786]
)
def test_malformed_scheduler_address(address):
    with pytest.raises(ParameterError, match="DASK_SCHEDULER"):
        hpo.check_scheduler("DASK_SCHEDULER", address)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_fails_fast_naming_it():
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(ParameterError, match="DASK_SCHEDULER") as e:
        with hpo.backend("dask", 1, address, timeout=2.0):
            pass
    assert time.perf_counter() - t0 < 5 and "127.0.0.1" in str(e.value)


def test_connect_error_names_parameter_and_address():
    address = f"tcp://127.0.0.1:{_free_port()}"
    with pytest.raises(ParameterError, match="DASK_SCHEDULER") as e:
        hpo.connect("DASK_SCHEDULER", address, timeout=1.0)
    assert address in str(e.value) and "failed after" in str(e.value)


def test_silent_port_is_not_a_scheduler_and_fails_fast():
    """Something that accepts TCP connections but never speaks Dask: a clear error within the
    timeout."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        address = f"tcp://127.0.0.1:{srv.getsockname()[1]}"
        t0 = time.perf_counter()
        with pytest.raises(ParameterError, match="DASK_SCHEDULER"):
            hpo.check_scheduler("DASK_SCHEDULER", address, timeout=1.0)
        assert time.perf_counter() - t0 < 5


def test_reachable_scheduler_is_used():
    from dask.distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None, protocol="tcp"
    ) as cluster:
        assert (
            hpo.check_scheduler("DASK_SCHEDULER", cluster.scheduler_address)
            == cluster.scheduler_address
        )
        search, X, y = _tiny_search()
        with hpo.backend("dask", 1, cluster.scheduler_address) as where:
            search.fit(X, y)
        assert where["scheduler"] == cluster.scheduler_address


# --- bad input through the notebooks (each stops in its validation cell) ----------

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "stem,override,name",
    [
        ("02_random_search", {"N_TRIALS": 0}, "N_TRIALS"),
        ("01_grid_search", {"BACKEND": "spark"}, "BACKEND"),
        ("01_grid_search", {"SPACE": {"lr": {"low": 0.1, "high": 0.001}}}, "SPACE"),
        (
            "03_bayesian_optimization",
            {"SPACE": {"lr": None, "hidden": None, "weight_decay": None, "batch_size": None}},
            "SPACE",
        ),
        (
            "03_bayesian_optimization",
            {"BACKEND": "dask", "DASK_SCHEDULER": "tcp://127.0.0.1:1"},
            "DASK_SCHEDULER",
        ),
    ],
)
def test_notebook_bad_input(stem: str, override: dict, name: str, tmp_path: Path):
    from notebook_runner import assert_fails_in_validation

    t0 = time.perf_counter()
    assert_fails_in_validation(ROOT / "notebooks" / f"{stem}.ipynb", tmp_path, name, **override)
    assert time.perf_counter() - t0 < 60  # an unreachable scheduler must not hang the notebook


def test_check_backend_and_table():
    from nbhelpers.core.params import ParameterError

    assert hpo.check_backend("loky", "", 2) == "loky"
    with pytest.raises(ParameterError, match="BACKEND='spark'"):
        hpo.check_backend("spark", "", 1)
    with pytest.raises(ParameterError, match="N_JOBS=0"):
        hpo.check_backend("loky", "", 0)
    with pytest.raises(ParameterError, match="DASK_SCHEDULER=3"):
        hpo.check_backend("loky", 3, 1)
    assert hpo.check_table(["lr", "weight_decay"], [4, 3], hpo.MLP_SPACE) == (
        ["lr", "weight_decay"],
        [4, 3],
    )
    with pytest.raises(ParameterError, match="TABLE_DIMS"):
        hpo.check_table(["lr", "lr"], [4, 3], hpo.MLP_SPACE)
    with pytest.raises(ParameterError, match="TABLE_DIMS"):
        hpo.check_table(
            ["lr", "batch_size"], [4, 3], hpo.MLP_SPACE
        )  # categorical: not a table axis
    with pytest.raises(ParameterError, match="TABLE_POINTS"):
        hpo.check_table(["lr", "weight_decay"], [4, 1], hpo.MLP_SPACE)


def test_random_summary_adds_the_test_comparison_and_coverage(lookup):
    import pandas as pd

    goal = lookup.best - 0.0025
    ttt = hpo.trials_to_target_table({"random": [[goal]]}, goal, limits={"random": 28})
    test = {
        "difference": 0.4,
        "low": -0.1,
        "high": 0.9,
        "verdict": "within noise",
        "seed_verdict": "within noise",
        "seeds": 3,
    }
    f = _values(
        tuning.random_summary(
            lookup,
            goal,
            [[goal]],
            [[goal]],
            pd.DataFrame({"reaches target": [True]}),
            ttt,
            pd.Series({"lr": 0.3, "weight_decay": 0.006}),
            met=True,
            test=test,
            distinct={"grid": 4.0, "random": 15.2},
        )
    )
    assert f["test: random winner minus grid winner"] == 0.4
    assert (f["test: image interval, low"], f["test: image interval, high"]) == (-0.1, 0.9)
    assert f["test: verdict over seeds"] == "within noise"
    assert f["grid: distinct lr values tried"] == 4.0
    assert f["random: distinct lr values tried"] == 15.2


def test_winner_cell_is_the_first_best_trial(lookup):
    points = [
        {"lr": 1e-4, "weight_decay": 1e-6},
        {"lr": 1e-2, "weight_decay": 1e-2},
        {"lr": 1e-2, "weight_decay": 1e-6},
    ]
    assert hpo.winner_cell(lookup, [0.5, 0.9, 0.9], points) == lookup.cell(points[1])
    with pytest.raises(ValueError, match="as many scores as points"):
        hpo.winner_cell(lookup, [0.5], points)


def test_cell_params_name_estimator_parameters_and_keep_integers():
    space = hpo.check_space("S", {"lr": SPACE["lr"], "hidden": {"values": [32, 64]}})
    axes = {"lr": hpo.dim_values(space["lr"], 3), "hidden": [32, 64]}
    obj = hpo.LookupObjective(space, axes, np.zeros((3, 2)))
    params = hpo.cell_params(obj, (2, 1))
    assert params == {"lr": pytest.approx(axes["lr"][2]), "module__width": 64}
    assert isinstance(params["module__width"], int)


def test_cell_test_hits_fits_each_distinct_cell_once(lookup):
    class Counting:
        fits = 0

        def __init__(self, lr=0.1, optimizer__weight_decay=0.0):
            self.lr, self.optimizer__weight_decay = lr, optimizer__weight_decay

        def get_params(self, deep=False):
            return {"lr": self.lr, "optimizer__weight_decay": self.optimizer__weight_decay}

        def set_params(self, **p):
            self.__dict__.update(p)
            return self

        def fit(self, X, y):
            Counting.fits += 1
            return self

        def predict(self, X):
            return np.full(len(X), 1 if self.lr > 1e-3 else 0)

    X, y_test = np.zeros((4, 2)), np.array([1, 1, 0, 1])
    high, low = (
        lookup.cell({"lr": 0.1, "weight_decay": 1e-6}),
        lookup.cell({"lr": 1e-4, "weight_decay": 1e-6}),
    )
    hits = hpo.cell_test_hits(Counting(), X, y_test, X, y_test, lookup, [high, low, high])
    assert Counting.fits == 2
    assert hits[high].tolist() == [True, True, False, True]
    assert hits[low].tolist() == [False, False, True, False]


def test_variance_shares_split_the_grid_exactly():
    space = {"lr": {"low": 1e-3, "high": 1e-1, "log": True, "int": False},
             "wd": {"low": 1e-6, "high": 1e-2, "log": True, "int": False}}  # fmt: skip
    axes = {"lr": [1e-3, 1e-2, 1e-1], "wd": [1e-6, 1e-2]}
    a = np.array([0.0, 0.3, 0.6])[:, None]  # lr's effect
    b = np.array([-0.05, 0.05])[None, :]  # weight decay's, smaller
    additive = hpo.variance_shares(hpo.LookupObjective(space, axes, 0.5 + a + b))
    # variances: lr 0.06 (values 0, .3, .6), wd 0.0025; no interaction
    assert additive.loc["lr", "share"] == pytest.approx(0.06 / 0.0625)
    assert additive.loc["wd", "share"] == pytest.approx(0.0025 / 0.0625)
    assert additive.loc["interactions", "share"] == pytest.approx(0.0, abs=1e-12)
    assert additive.loc["lr", "score_range"] == pytest.approx(0.6)
    # a pure interaction: no axis explains anything on its own
    checker = np.array([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]])  # every row and column mean 0
    inter = hpo.variance_shares(hpo.LookupObjective(space, axes, checker))
    assert inter.loc[["lr", "wd"], "share"].tolist() == pytest.approx([0.0, 0.0])
    assert inter.loc["interactions", "share"] == pytest.approx(1.0)
