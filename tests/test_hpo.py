"""Unit tests of nbhelpers.hpo: the space and its conversions, trials to target, backends, the estimator."""

from __future__ import annotations

import math
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from nbhelpers import hpo
from nbhelpers.params import ParameterError

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


@pytest.mark.parametrize("bad", [
    {}, [], None, "lr",
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
])
def test_check_space_rejects_empty_or_malformed(bad):
    with pytest.raises(ParameterError) as e:
        hpo.check_space("SPACE", bad)
    assert e.value.name == "SPACE"


def test_merge_space_replaces_adds_removes():
    s = hpo.merge_space(hpo.MLP_SPACE, {"lr": {"low": 1e-3, "high": 1e-2, "log": True}, "batch_size": None,
                                        "dropout": {"low": 0.0, "high": 0.5}})
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
    assert hpo.to_grid(s, {"lr": 2, "hidden": 3, "dropout": 2}, rename=False)["hidden"] == [32, 128, 512]


def test_conversions_agree_on_bounds_and_scale():
    """Grid ends, distribution supports and skopt dimensions share the same bounds and priors."""
    s = hpo.check_space("SPACE", SPACE)
    grid, dists, dims = hpo.to_grid(s, 5), hpo.to_distributions(s), hpo.to_skopt(s)
    assert set(grid) == set(dists) == set(dims) == {"lr", "module__width", "module__dropout", "batch_size"}
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
        [int(v) for v in dims["module__width"].rvs(200, random_state=0)])


def test_friendly_inverts_param_names():
    assert hpo.friendly({"module__width": np.int64(64), "optimizer__weight_decay": 1e-4, "lr": 0.1}) == {
        "hidden": 64, "weight_decay": 1e-4, "lr": 0.1}
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
    hist = {"a": [[0.1, 0.9, 0.2], [0.95, 0.0, 0.0], [0.0, 0.0, 0.0, 0.91]],
            "b": [[0.0, 0.0], [0.0, 0.9]]}
    t = hpo.trials_to_target_table(hist, 0.9, limits={"a": 2.5, "b": 5})
    assert t.loc["a", "per_seed"] == [2, 1, 4]
    assert t.loc["a", "mean_trials"] == pytest.approx(7 / 3)
    assert t.loc["a", "median_trials"] == 2 and t.loc["a", "max_trials"] == 4 and t.loc["a", "min_trials"] == 1
    assert t.loc["a", "reached"] == 3 and bool(t.loc["a", "met"]) is True
    # a seed that never reaches the target counts as its budget + 1, and the target is then missed
    assert t.loc["b", "per_seed"] == [None, 2]
    assert t.loc["b", "mean_trials"] == pytest.approx((3 + 2) / 2)
    assert t.loc["b", "reached"] == 1 and bool(t.loc["b", "met"]) is False
    assert t.loc["a", "std_trials"] == pytest.approx(np.std([2, 1, 4], ddof=1))


def test_curves_frame_shape():
    df = hpo.curves_frame({"m": [[0.1, 0.3, 0.2], [0.2, 0.1, 0.4]]})
    assert len(df) == 6 and df[df.seed == 0]["best"].tolist() == [0.1, 0.3, 0.3]


# --- the lookup objective and the search methods on it ---------------------------------------


@pytest.fixture(scope="module")
def lookup():
    space = hpo.check_space("S", {"lr": SPACE["lr"], "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True}})
    axes = {"lr": hpo.dim_values(space["lr"], 16), "weight_decay": hpo.dim_values(space["weight_decay"], 7)}
    lr = np.log10(axes["lr"])[:, None]
    scores = 0.9 - 0.05 * (lr + 2.0) ** 2 + 0.001 * np.arange(7)[None, :]
    return hpo.LookupObjective(space, axes, scores)


def test_lookup_snaps_to_nearest_cell_in_log_space(lookup):
    assert lookup.size == 112 and lookup.best == pytest.approx(lookup.scores.max())
    assert lookup.cell({"lr": 1e-2, "weight_decay": 1e-6}) == (10, 0)
    assert lookup.cell({"lr": 1.2e-2, "weight_decay": 1.5e-2}) == (10, 6)  # beyond the range: the edge
    assert lookup({"lr": 1e-4, "weight_decay": 1e-2}) == pytest.approx(lookup.scores[0, 6])


def test_lookup_from_results_roundtrip(lookup):
    import pandas as pd

    rows = [{"lr": a, "weight_decay": b, "mean_cv": lookup.scores[i, j]}
            for i, a in enumerate(lookup.axes["lr"]) for j, b in enumerate(lookup.axes["weight_decay"])]
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
    assert len(g) == 16 and len({lookup.cell(p)[0] for p in gp}) == 4 and max(g) == pytest.approx(lookup.best)
    tpe = hpo.tpe_history(lookup, 12, seed=0, initial=4)
    assert len(tpe) == 12 and tpe == hpo.tpe_history(lookup, 12, seed=0, initial=4)


def test_gp_history_runs(lookup):
    scores, res = hpo.gp_history(lookup, 8, seed=0, initial=3)
    assert len(scores) == 8 and scores == pytest.approx([-v for v in res.func_vals])
    assert max(scores) > lookup.scores.mean()


# --- the estimator ---------------------------------------------------------------------------


def test_estimator_is_a_seeded_sklearn_estimator():
    from sklearn.base import clone

    est = hpo.make_estimator(64, 10, epochs=2, seed=5, lr=0.01, hidden=30)
    assert est.module__width == 30 and est.lr == 0.01 and est.random_state == 5 and est.max_epochs == 2
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


# --- backends ------------------------------------------------------------------------------


def _tiny_search():
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    rng = np.random.RandomState(0)
    X = rng.rand(90, 8).astype(np.float32)
    y = (X[:, 0] > 0.5).astype(np.int64)
    est = hpo.make_estimator(8, 2, epochs=1, seed=0, hidden=6)
    return GridSearchCV(est, {"lr": [0.01, 0.1]}, cv=StratifiedKFold(3, shuffle=True, random_state=0)), X, y


def test_dask_local_cluster_matches_sequential():
    search, X, y = _tiny_search()
    with hpo.backend("loky", 1) as where:
        seq = search.fit(X, y).cv_results_["mean_test_score"]
    assert where["backend"] == "loky"
    search, X, y = _tiny_search()
    with hpo.backend("dask", 1) as where:
        dsk = search.fit(X, y).cv_results_["mean_test_score"]
    assert where["backend"] == "dask" and where["scheduler"]
    assert np.array_equal(seq, dsk)


@pytest.mark.parametrize("name,n_jobs,param", [("spark", 1, "BACKEND"), ("loky", 0, "N_JOBS")])
def test_backend_rejects_bad_choice(name, n_jobs, param):
    with pytest.raises(ParameterError, match=param):
        with hpo.backend(name, n_jobs):
            pass


@pytest.mark.parametrize("address", ["nonsense", "http://host:8786", "tcp://host", "tcp://host:port", 8786])
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


def test_silent_port_is_not_a_scheduler_and_fails_fast():
    """Something that accepts TCP connections but never speaks Dask: a clear error within the timeout."""
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

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                      protocol="tcp") as cluster:
        assert hpo.check_scheduler("DASK_SCHEDULER", cluster.scheduler_address) == cluster.scheduler_address
        search, X, y = _tiny_search()
        with hpo.backend("dask", 1, cluster.scheduler_address) as where:
            search.fit(X, y)
        assert where["scheduler"] == cluster.scheduler_address


# --- bad input through the notebooks (each stops in its validation cell) ----------

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stem,override,name", [
    ("02_random_search", {"N_TRIALS": 0}, "N_TRIALS"),
    ("01_grid_search", {"BACKEND": "spark"}, "BACKEND"),
    ("01_grid_search", {"SPACE": {"lr": {"low": 0.1, "high": 0.001}}}, "SPACE"),
    ("03_bayesian_optimization", {"SPACE": {"lr": None, "hidden": None, "weight_decay": None,
                                            "batch_size": None}}, "SPACE"),
    ("03_bayesian_optimization", {"BACKEND": "dask", "DASK_SCHEDULER": "tcp://127.0.0.1:1"}, "DASK_SCHEDULER"),
])
def test_notebook_bad_input(stem: str, override: dict, name: str, tmp_path: Path):
    from notebook_runner import assert_fails_in_validation

    t0 = time.perf_counter()
    assert_fails_in_validation(ROOT / "notebooks" / f"{stem}.ipynb", tmp_path, name, **override)
    assert time.perf_counter() - t0 < 60  # an unreachable scheduler must not hang the notebook


def test_check_backend_and_table():
    from nbhelpers.params import ParameterError

    assert hpo.check_backend("loky", "", 2) == "loky"
    with pytest.raises(ParameterError, match="BACKEND='spark'"):
        hpo.check_backend("spark", "", 1)
    with pytest.raises(ParameterError, match="N_JOBS=0"):
        hpo.check_backend("loky", "", 0)
    with pytest.raises(ParameterError, match="DASK_SCHEDULER=3"):
        hpo.check_backend("loky", 3, 1)
    assert hpo.check_table(["lr", "weight_decay"], [4, 3], hpo.MLP_SPACE) == (["lr", "weight_decay"], [4, 3])
    with pytest.raises(ParameterError, match="TABLE_DIMS"):
        hpo.check_table(["lr", "lr"], [4, 3], hpo.MLP_SPACE)
    with pytest.raises(ParameterError, match="TABLE_DIMS"):
        hpo.check_table(["lr", "batch_size"], [4, 3], hpo.MLP_SPACE)  # categorical: not a table axis
    with pytest.raises(ParameterError, match="TABLE_POINTS"):
        hpo.check_table(["lr", "weight_decay"], [4, 1], hpo.MLP_SPACE)
