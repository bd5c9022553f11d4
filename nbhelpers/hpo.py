"""Hyperparameter search for the shared MLP: one space definition, a skorch estimator, search helpers.

The search space is written once (``MLP_SPACE``) as plain dicts, one per hyperparameter:
``{"low": 1e-4, "high": 0.1, "log": True}`` (a real range; add ``"int": True`` for integers) or
``{"values": [32, 128]}`` (a categorical choice). ``to_grid``, ``to_distributions`` and
``to_skopt`` turn that one definition into what ``GridSearchCV``, ``RandomizedSearchCV`` and
``BayesSearchCV`` expect, keyed by the estimator's parameter names (``PARAM_NAMES``).
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from skorch import NeuralNetClassifier
from torch import nn

from .cache import config_key, runtime_key
from .models import MLP
from .params import ParameterError, check_choice, check_int, check_list
from .paths import cache_dir

BACKENDS = ("loky", "dask")

#: Friendly hyperparameter name -> parameter name of the skorch estimator.
PARAM_NAMES = {
    "lr": "lr",
    "hidden": "module__width",
    "dropout": "module__dropout",
    "weight_decay": "optimizer__weight_decay",
    "batch_size": "batch_size",
    "epochs": "max_epochs",
}

#: The one search space of notebooks 01-03 (learning rate and weight decay on a log scale).
MLP_SPACE: dict[str, dict] = {
    "lr": {"low": 1e-4, "high": 0.1, "log": True},
    "hidden": {"low": 32, "high": 512, "log": True, "int": True},
    "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
    "batch_size": {"values": [32, 128]},
}

#: Values of the hyperparameters a search leaves out (the shared baseline's recipe).
DEFAULTS = {"lr": 1e-3, "hidden": 300, "dropout": 0.0, "weight_decay": 0.0, "batch_size": 64}


# ---------------------------------------------------------------------------------------------
# The space
# ---------------------------------------------------------------------------------------------


def check_space(name: str, space: Any) -> dict[str, dict]:
    """Check a search space and return it normalised (every numeric dim with ``log`` and ``int``).

    Args:
        name: the notebook parameter holding the space (named in errors).
        space: {hyperparameter: {"low", "high"[, "log"][, "int"]} or {"values": [...]}}.

    Returns:
        The checked space (a new dict).
    """
    allowed = ("a non-empty dict {hyperparameter: {'low': a, 'high': b, 'log': bool, 'int': bool} or "
               "{'values': [...]}} with hyperparameters among " + ", ".join(PARAM_NAMES))
    if not isinstance(space, Mapping) or not space:
        raise ParameterError(name, space, allowed)
    out = {}
    for key, dim in space.items():
        where = f"{allowed}; problem with {key!r}"
        if key not in PARAM_NAMES or not isinstance(dim, Mapping):
            raise ParameterError(name, space, where)
        if "values" in dim:
            values = dim["values"]
            if set(dim) != {"values"} or isinstance(values, str) or not isinstance(values, Sequence) or not values:
                raise ParameterError(name, space, where + ": 'values' must be a non-empty list and alone")
            out[key] = {"values": list(values)}
            continue
        if not {"low", "high"} <= set(dim) or not set(dim) <= {"low", "high", "log", "int"}:
            raise ParameterError(name, space, where + ": give 'low' and 'high' (and optionally 'log', 'int')")
        low, high, log, is_int = dim["low"], dim["high"], bool(dim.get("log", False)), bool(dim.get("int", False))
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high))
        if not numbers or not low < high or (log and low <= 0):
            raise ParameterError(name, space, where + ": need numbers low < high (low > 0 on a log scale)")
        if is_int and not (float(low).is_integer() and float(high).is_integer()):
            raise ParameterError(name, space, where + ": integer bounds for 'int'")
        cast = int if is_int else float
        out[key] = {"low": cast(low), "high": cast(high), "log": log, "int": is_int}
    return out


def merge_space(base: Mapping[str, dict], overrides: Mapping[str, Any], name: str = "SPACE") -> dict[str, dict]:
    """A space with some dimensions replaced, added, or removed (an override of ``None`` removes one).

    Args:
        base: the space to start from, e.g. ``MLP_SPACE``.
        overrides: {hyperparameter: dimension or None}.
        name: parameter named in errors.

    Returns:
        The checked, merged space.
    """
    if not isinstance(overrides, Mapping):
        raise ParameterError(name, overrides, "a dict of dimensions to replace, add, or remove (None)")
    merged = {**base, **overrides}
    return check_space(name, {k: v for k, v in merged.items() if v is not None})


def dim_values(dim: Mapping, points: int) -> list:
    """``points`` evenly spaced values of one dimension (log-spaced when ``log``), ends included.

    Args:
        dim: a checked dimension.
        points: how many values for a numeric range (categorical dims give all their values).

    Returns:
        The values (integers rounded and de-duplicated).
    """
    if "values" in dim:
        return list(dim["values"])
    check_int("points", points, minimum=2)
    f = np.geomspace if dim["log"] else np.linspace
    vals = f(dim["low"], dim["high"], points)
    if dim["int"]:
        return sorted({int(round(v)) for v in vals})
    return [float(v) for v in vals]


def _key(name: str, rename: bool) -> str:
    return PARAM_NAMES.get(name, name) if rename else name


def to_grid(space: Mapping[str, dict], points: int | Mapping[str, int] = 3, rename: bool = True) -> dict[str, list]:
    """The space as a ``GridSearchCV`` parameter grid.

    Args:
        space: a checked space.
        points: values per numeric dimension (one number, or {hyperparameter: number}).
        rename: key by estimator parameter names (``PARAM_NAMES``) rather than friendly names.

    Returns:
        {parameter: list of values}.
    """
    per = points if isinstance(points, Mapping) else {k: points for k in space}
    return {_key(k, rename): dim_values(d, per.get(k, 3)) for k, d in space.items()}


class IntLogUniform:
    """Integers in [low, high] drawn log-uniformly (``rvs`` like a scipy distribution)."""

    def __init__(self, low: int, high: int):
        from scipy.stats import loguniform

        self.low, self.high = int(low), int(high)
        self._real = loguniform(self.low, self.high + 1)

    def rvs(self, size=None, random_state=None):
        """Draw integers; ``random_state`` as in scipy."""
        x = np.floor(self._real.rvs(size=size, random_state=random_state)).astype(int)
        x = np.clip(x, self.low, self.high)
        return int(x) if size is None else x

    def __repr__(self) -> str:
        return f"IntLogUniform({self.low}, {self.high})"


def to_distributions(space: Mapping[str, dict], rename: bool = True) -> dict[str, Any]:
    """The space as ``RandomizedSearchCV`` distributions (log-uniform where ``log``).

    Args:
        space: a checked space.
        rename: key by estimator parameter names.

    Returns:
        {parameter: scipy distribution, ``IntLogUniform`` or list of values}.
    """
    from scipy.stats import loguniform, randint, uniform

    out = {}
    for k, d in space.items():
        if "values" in d:
            dist: Any = list(d["values"])
        elif d["int"]:
            dist = IntLogUniform(d["low"], d["high"]) if d["log"] else randint(d["low"], d["high"] + 1)
        else:
            dist = loguniform(d["low"], d["high"]) if d["log"] else uniform(d["low"], d["high"] - d["low"])
        out[_key(k, rename)] = dist
    return out


def to_skopt(space: Mapping[str, dict], rename: bool = True) -> dict[str, Any]:
    """The space as scikit-optimize dimensions (``BayesSearchCV`` search space).

    Args:
        space: a checked space.
        rename: key (and name) by estimator parameter names.

    Returns:
        {parameter: ``Real``, ``Integer`` or ``Categorical``}.
    """
    from skopt.space import Categorical, Integer, Real

    out = {}
    for k, d in space.items():
        key = _key(k, rename)
        if "values" in d:
            out[key] = Categorical(list(d["values"]), name=key)
        else:
            cls = Integer if d["int"] else Real
            out[key] = cls(d["low"], d["high"], prior="log-uniform" if d["log"] else "uniform", name=key)
    return out


def friendly(params: Mapping[str, Any]) -> dict[str, Any]:
    """Estimator parameter names back to the friendly names of the space.

    Args:
        params: e.g. ``search.best_params_``.

    Returns:
        The same values keyed like ``MLP_SPACE`` (numbers as plain Python types).
    """
    inverse = {v: k for k, v in PARAM_NAMES.items()}
    return {inverse.get(k, k): (v.item() if hasattr(v, "item") else v) for k, v in params.items()}


def describe_space(space: Mapping[str, dict]) -> pd.DataFrame:
    """One row per hyperparameter: its range or values, scale, and estimator parameter.

    Args:
        space: a checked space.

    Returns:
        The table.
    """
    rows = []
    for k, d in space.items():
        if "values" in d:
            rows.append({"hyperparameter": k, "range": str(d["values"]), "scale": "categorical"})
        else:
            kind = ("log " if d["log"] else "linear ") + ("integer" if d["int"] else "real")
            rows.append({"hyperparameter": k, "range": f"[{d['low']:g}, {d['high']:g}]", "scale": kind})
        rows[-1]["estimator parameter"] = PARAM_NAMES[k]
    return pd.DataFrame(rows).set_index("hyperparameter")


# ---------------------------------------------------------------------------------------------
# The estimator and the data
# ---------------------------------------------------------------------------------------------


class WidthMLP(MLP):
    """The shared MLP with one width knob: hidden layers (width, width // 3), like 300-100."""

    def __init__(self, in_features: int = 784, width: int = 300, n_classes: int = 10, dropout: float = 0.0):
        super().__init__(in_features, (int(width), max(1, int(width) // 3)), n_classes, dropout=float(dropout))


class SeededNet(NeuralNetClassifier):
    """A skorch classifier that seeds torch before every fit, so that each fit repeats exactly."""

    def __init__(self, module, criterion=nn.CrossEntropyLoss, random_state: int = 0, **kwargs):
        super().__init__(module, criterion=criterion, **kwargs)
        self.random_state = random_state

    def fit(self, X, y=None, **fit_params):
        """Seed torch with ``random_state``, then fit as skorch does."""
        torch.manual_seed(self.random_state)
        return super().fit(X, y, **fit_params)


def make_estimator(in_features: int, n_classes: int = 10, epochs: int = 5, seed: int = 0,
                   device: str = "cpu", **params: Any):
    """A skorch estimator of the shared MLP (Adam, cross-entropy) for scikit-learn's search API.

    Args:
        in_features: input size (784 for 28x28 images).
        n_classes: number of classes.
        epochs: training epochs of every fit.
        seed: torch seed set before every fit (initialisation and shuffling).
        device: where to train.
        **params: hyperparameters by friendly name (``lr``, ``hidden``, ``weight_decay``,
            ``batch_size``, ``dropout``); the rest come from ``DEFAULTS``.

    Returns:
        An unfitted ``SeededNet`` (a ``skorch.NeuralNetClassifier``).
    """
    unknown = set(params) - set(PARAM_NAMES)
    if unknown:
        raise ParameterError("params", sorted(unknown), "hyperparameters among " + ", ".join(PARAM_NAMES))
    hp = {**DEFAULTS, **params}
    return SeededNet(
        WidthMLP, module__in_features=in_features, module__n_classes=n_classes,
        module__width=int(hp["hidden"]), module__dropout=float(hp["dropout"]),
        optimizer=torch.optim.Adam, lr=float(hp["lr"]), optimizer__weight_decay=float(hp["weight_decay"]),
        batch_size=int(hp["batch_size"]), max_epochs=int(params.get("epochs", epochs)),
        iterator_train__shuffle=True, train_split=None, verbose=0, device=device, random_state=seed,
    )


def flat_subset(X: np.ndarray, y: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A stratified subset of ``n`` samples (all when ``n`` is 0 or too large), images flattened.

    Args:
        X: images (N, 1, H, W).
        y: labels (N,).
        n: samples to keep.
        seed: seed of the draw.

    Returns:
        (X as float32 (n, H*W), y as int64).
    """
    from sklearn.model_selection import train_test_split

    X = X.reshape(len(X), -1).astype(np.float32)
    if 0 < n < len(y):
        idx, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y, random_state=seed)
        idx = np.sort(idx)
        X, y = X[idx], y[idx]
    return X, y.astype(np.int64)


def results_table(search, top: int | None = None) -> pd.DataFrame:
    """A search's ``cv_results_`` as a table: friendly parameters, mean and std CV score, fit time.

    Args:
        search: a fitted ``GridSearchCV``, ``RandomizedSearchCV`` or ``BayesSearchCV``.
        top: keep only the best ``top`` rows (None keeps all, in trial order).

    Returns:
        One row per trial (``trial`` numbered from 1 in the order tried).
    """
    cv = search.cv_results_
    rows = [friendly(p) for p in cv["params"]]
    df = pd.DataFrame(rows)
    df["mean_cv"] = np.asarray(cv["mean_test_score"], dtype=float)
    df["std_cv"] = np.asarray(cv["std_test_score"], dtype=float)
    df["fit_seconds"] = np.asarray(cv["mean_fit_time"], dtype=float)
    df.insert(0, "trial", np.arange(1, len(df) + 1))
    if top is not None:
        df = df.sort_values("mean_cv", ascending=False, kind="stable").head(top)
    return df


# ---------------------------------------------------------------------------------------------
# Backends: loky (local processes) or a Dask cluster, through joblib
# ---------------------------------------------------------------------------------------------


def check_backend(backend: Any, scheduler: Any, n_jobs: Any) -> str:
    """Check ``BACKEND``, ``DASK_SCHEDULER`` (reachable within seconds when given) and ``N_JOBS``.

    Args:
        backend: one of ``BACKENDS``.
        scheduler: "" (start a local cluster) or a scheduler address such as "tcp://host:8786".
        n_jobs: parallel fits, an integer >= 1.

    Returns:
        The backend.
    """
    check_choice("BACKEND", backend, BACKENDS)
    if backend == "dask":
        check_scheduler("DASK_SCHEDULER", scheduler)  # fails within seconds if unreachable
    elif not isinstance(scheduler, str):
        raise ParameterError("DASK_SCHEDULER", scheduler, "a string ('' or tcp://host:port)")
    check_int("N_JOBS", n_jobs, minimum=1)
    return backend


def check_table(dims: Any, points: Any, space: Mapping[str, dict]) -> tuple[list[str], list[int]]:
    """Check ``TABLE_DIMS`` (two different numeric dimensions of ``space``) and ``TABLE_POINTS``.

    Args:
        dims: the two hyperparameters of the lookup table.
        points: grid points along each of them (integers >= 2).
        space: the search space.

    Returns:
        (dims, points) as lists.
    """
    numeric = [k for k, d in space.items() if "values" not in d]
    check_list("TABLE_DIMS", dims, lambda n, v: check_choice(n, v, numeric), min_len=2)
    if len(dims) != 2 or dims[0] == dims[1]:
        raise ParameterError("TABLE_DIMS", dims, "two different numeric hyperparameters of the space")
    check_list("TABLE_POINTS", points, lambda n, v: check_int(n, v, minimum=2), min_len=2)
    if len(points) != 2:
        raise ParameterError("TABLE_POINTS", points, "two integers >= 2, one per TABLE_DIMS axis")
    return list(dims), list(points)


def parse_scheduler(name: str, address: Any) -> tuple[str, int]:
    """Host and port of a Dask scheduler address such as ``tcp://10.0.0.5:8786`` or ``host:8786``.

    Args:
        name: parameter named in errors (``DASK_SCHEDULER``).
        address: the address string.

    Returns:
        (host, port).
    """
    allowed = "'' (start a local Dask cluster) or a scheduler address like 'tcp://host:8786'"
    if not isinstance(address, str):
        raise ParameterError(name, address, allowed)
    url = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        port = url.port
    except ValueError:
        port = None
    if url.scheme not in ("tcp", "tls") or not url.hostname or port is None:
        raise ParameterError(name, address, allowed)
    return url.hostname, port


def check_scheduler(name: str, address: str, timeout: float = 3.0, handshake: bool = True) -> str:
    """Check that a Dask scheduler answers at ``address`` within seconds (fail fast, never hang).

    Args:
        name: parameter named in errors (``DASK_SCHEDULER``).
        address: the scheduler address; '' means a local cluster and is not probed.
        timeout: seconds to wait for the TCP connection and for the Dask handshake each.
        handshake: also connect a Dask client (a TCP port that answers may not be a scheduler).

    Returns:
        The address, unchanged.
    """
    if address == "":
        return address
    host, port = parse_scheduler(name, address)
    t0 = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        raise _unreachable(name, address, host, port, t0, err) from None
    if handshake:
        err = _dask_handshake(address, timeout)
        if err is not None:  # something else listens there, or a scheduler that does not answer
            raise _unreachable(name, address, host, port, t0, err)
    return address


def _dask_handshake(address: str, timeout: float) -> BaseException | None:
    """Ask the scheduler for its identity over Dask's comm layer, within ``timeout``; the error or None."""
    import asyncio
    import threading

    outcome: list[BaseException | None] = []

    async def probe() -> None:
        from distributed.comm import connect

        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            reply = await comm.read()
        finally:
            await comm.close()
        if not isinstance(reply, dict) or "Scheduler" not in str(reply.get("type", "")):
            raise ConnectionError(f"the server there is not a Dask scheduler (identity {str(reply)[:80]})")

    def run() -> None:
        try:
            asyncio.run(asyncio.wait_for(probe(), timeout))
            outcome.append(None)
        except BaseException as err:  # reported to the caller, never raised in the thread
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)  # works inside Jupyter's running event loop
    thread.start()
    thread.join(timeout + 2.0)
    if not outcome or isinstance(outcome[0], asyncio.TimeoutError):
        return TimeoutError(f"no answer from a Dask scheduler within {timeout} s")
    return outcome[0]


def _unreachable(name: str, address: str, host: str, port: int, t0: float, err: BaseException) -> ParameterError:
    return ParameterError(
        name, address, f"a reachable Dask scheduler: connecting to {host}:{port} failed after "
        f"{time.perf_counter() - t0:.1f} s ({err.__class__.__name__}: {str(err)[:120]}); "
        "leave it '' for a local cluster"
    )


@contextmanager
def backend(name: str = "loky", n_jobs: int = 1, scheduler: str = "", timeout: float = 3.0) -> Iterator[dict]:
    """Run the scikit-learn searches inside on loky processes or on a Dask cluster (joblib backend).

    Searches inside should leave their own ``n_jobs`` at None so that the backend decides.
    With ``dask`` and an empty ``scheduler`` a light in-process ``LocalCluster`` is started
    (``n_jobs`` threads, one worker); fits on threads share torch's global seed, so only
    ``n_jobs=1`` repeats exactly.

    Args:
        name: "loky" or "dask" (the ``BACKEND`` parameter).
        n_jobs: parallel fits (the ``N_JOBS`` parameter).
        scheduler: '' for a local cluster, else the address of a running Dask scheduler.
        timeout: seconds allowed to reach the scheduler.

    Yields:
        {"backend", "n_jobs", "scheduler"}: what the searches run on.
    """
    import joblib

    check_choice("BACKEND", name, BACKENDS)
    check_int("N_JOBS", n_jobs, minimum=1)
    if name == "loky":
        with joblib.parallel_backend("loky", n_jobs=n_jobs):
            yield {"backend": "loky", "n_jobs": n_jobs, "scheduler": ""}
        return
    from dask.distributed import Client, LocalCluster

    cluster = None
    if scheduler:
        host, port = parse_scheduler("DASK_SCHEDULER", scheduler)
        check_scheduler("DASK_SCHEDULER", scheduler, timeout)
        t0 = time.perf_counter()
        try:
            client = Client(scheduler, timeout=f"{timeout}s")
        except Exception as err:
            raise _unreachable("DASK_SCHEDULER", scheduler, host, port, t0, err) from None
    else:
        cluster = LocalCluster(n_workers=1, threads_per_worker=n_jobs, processes=False,
                               dashboard_address=None)
        client = Client(cluster)
    try:
        with joblib.parallel_backend("dask", n_jobs=n_jobs):
            yield {"backend": "dask", "n_jobs": n_jobs, "scheduler": client.scheduler.address}
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ---------------------------------------------------------------------------------------------
# Comparing search methods: best-so-far curves, trials to a target, a lookup objective
# ---------------------------------------------------------------------------------------------


def best_so_far(scores: Sequence[float]) -> np.ndarray:
    """The running maximum of scores in trial order (what a search has found after k trials).

    Args:
        scores: one score per trial, higher is better.

    Returns:
        Array of the same length.
    """
    return np.maximum.accumulate(np.asarray(scores, dtype=float))


def trials_to_target(scores: Sequence[float], target: float) -> int | None:
    """The number of trials until a score first reaches ``target`` (1-based), or None if never.

    Args:
        scores: one score per trial, in the order tried.
        target: the score to reach (``>=``).

    Returns:
        The trial count, or None when no trial reaches it.
    """
    hits = np.flatnonzero(np.asarray(scores, dtype=float) >= target)
    return int(hits[0]) + 1 if len(hits) else None


def trials_to_target_table(histories: Mapping[str, Sequence[Sequence[float]]], target: float,
                           limits: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Trials each method needs to reach ``target``, over seeds.

    A seed that never reaches the target counts as its budget + 1 (so the mean is then a lower
    bound, flagged by ``reached < seeds``).

    Args:
        histories: {method: [scores of one seed, in trial order], ...}.
        target: the score to reach.
        limits: optional {method: the most trials allowed by a target}; adds ``limit`` and ``met``.

    Returns:
        One row per method: seeds, reached, mean, std, median, min, max trials, per-seed trials.
    """
    rows = []
    for method, runs in histories.items():
        counts = [trials_to_target(r, target) for r in runs]
        filled = np.array([c if c is not None else len(r) + 1 for c, r in zip(counts, runs)], dtype=float)
        row = {"method": method, "seeds": len(runs), "reached": sum(c is not None for c in counts),
               "mean_trials": filled.mean(), "std_trials": filled.std(ddof=1) if len(filled) > 1 else 0.0,
               "median_trials": float(np.median(filled)), "min_trials": filled.min(), "max_trials": filled.max(),
               "per_seed": [c if c is not None else None for c in counts]}
        if limits is not None and method in limits:
            row["limit"] = float(limits[method])
            row["met"] = bool(row["reached"] == row["seeds"] and row["mean_trials"] <= limits[method])
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def curves_frame(histories: Mapping[str, Sequence[Sequence[float]]]) -> pd.DataFrame:
    """Best-so-far curves of several methods and seeds as one long table.

    Args:
        histories: {method: [scores of one seed, in trial order], ...}.

    Returns:
        Columns method, seed, trial (from 1), best.
    """
    rows = [{"method": m, "seed": s, "trial": t + 1, "best": b}
            for m, runs in histories.items() for s, r in enumerate(runs) for t, b in enumerate(best_so_far(r))]
    return pd.DataFrame(rows)


def plot_best_so_far(histories: Mapping[str, Sequence[Sequence[float]]], target: float | None = None,
                     title: str = "Best score so far", ylim: tuple[float, float] | None = None) -> Figure:
    """Mean best-so-far score against trials per method, shaded from the worst to the best seed.

    Args:
        histories: {method: [scores of one seed, in trial order], ...}.
        target: optional horizontal line (e.g. the grid's best minus 0.5 points).
        title: figure title.
        ylim: optional (bottom, top) of the score axis, to zoom on the best scores.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = curves_frame(histories)
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(df, x="trial", y="best", hue="method", errorbar=("pi", 100), estimator="mean", ax=ax)
    if target is not None:
        ax.axhline(target, color="k", ls="--", lw=1, label="target")
        ax.legend()
    ax.set(xlabel="trials", ylabel="best mean CV accuracy so far", title=title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    fig.tight_layout()
    return fig


def heatmap(results: pd.DataFrame, x: str, y: str, value: str = "mean_cv", agg: str = "max",
            title: str | None = None) -> Figure:
    """Seaborn heatmap of a score over two hyperparameters (the others aggregated by ``agg``).

    Args:
        results: a ``results_table`` (friendly parameter columns plus ``value``).
        x: hyperparameter on the x axis.
        y: hyperparameter on the y axis.
        value: the score column.
        agg: how to combine the other hyperparameters ("max" or "mean").
        title: figure title.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    table = results.pivot_table(index=y, columns=x, values=value, aggfunc=agg).sort_index(ascending=False)
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * table.shape[1], 1.0 + 0.5 * table.shape[0]))
    sns.heatmap(table, annot=True, fmt=".3f", cmap="viridis", ax=ax,
                xticklabels=[fmt(v) for v in table.columns], yticklabels=[fmt(v) for v in table.index],
                cbar_kws={"label": f"{value} ({agg} over the others)"})
    ax.set_title(title or f"{value} over {x} and {y}")
    fig.tight_layout()
    return fig


class LookupObjective:
    """A precomputed objective: CV scores on a fine grid, looked up at the nearest grid cell.

    Searches over the continuous space are compared cheaply and fairly on it: every proposed
    point is snapped to the nearest evaluated configuration (nearest in log space on a log axis).
    """

    def __init__(self, space: Mapping[str, dict], axes: Mapping[str, Sequence], scores: np.ndarray):
        self.space = {k: space[k] for k in axes}
        self.axes = {k: np.asarray(v, dtype=float) for k, v in axes.items()}
        self.scores = np.asarray(scores, dtype=float)
        if self.scores.shape != tuple(len(v) for v in self.axes.values()):
            raise ValueError(f"scores of shape {self.scores.shape} do not match the axes")

    @classmethod
    def from_results(cls, space: Mapping[str, dict], axes: Mapping[str, Sequence], results: pd.DataFrame,
                     value: str = "mean_cv") -> "LookupObjective":
        """Build from a ``results_table`` of an exhaustive grid over ``axes``."""
        scores = np.full(tuple(len(v) for v in axes.values()), np.nan)
        for _, row in results.iterrows():
            idx = tuple(int(np.argmin(np.abs(np.asarray(v, dtype=float) - row[k]))) for k, v in axes.items())
            scores[idx] = row[value]
        if np.isnan(scores).any():
            raise ValueError("the results do not cover every cell of the axes")
        return cls(space, axes, scores)

    def cell(self, point: Mapping[str, float]) -> tuple[int, ...]:
        """Index of the grid cell nearest to a point {hyperparameter: value}."""
        idx = []
        for k, vals in self.axes.items():
            log = self.space[k].get("log", False)
            f = np.log if log else (lambda v: v)
            idx.append(int(np.argmin(np.abs(f(vals) - f(float(point[k]))))))
        return tuple(idx)

    def __call__(self, point: Mapping[str, float]) -> float:
        """The score of the nearest evaluated configuration."""
        return float(self.scores[self.cell(point)])

    @property
    def size(self) -> int:
        """Number of configurations (the exhaustive grid's trials)."""
        return int(self.scores.size)

    @property
    def best(self) -> float:
        """The best score of the exhaustive grid."""
        return float(self.scores.max())


def random_history(obj: LookupObjective, trials: int, seed: int) -> tuple[list[float], list[dict]]:
    """Random search on a lookup objective: draws from ``to_distributions`` of its space.

    Args:
        obj: the objective.
        trials: number of trials.
        seed: seed of the draws.

    Returns:
        (scores, points) in trial order.
    """
    dists = to_distributions(obj.space, rename=False)
    rng = np.random.RandomState(seed)
    points = [{k: (d.rvs(random_state=rng) if hasattr(d, "rvs") else d[rng.randint(len(d))])
               for k, d in dists.items()} for _ in range(trials)]
    return [obj(p) for p in points], points


def grid_history(obj: LookupObjective, points: int | Mapping[str, int], seed: int) -> tuple[list[float], list[dict]]:
    """Grid search on a lookup objective: a coarse ``to_grid`` of its space, in a seeded random order.

    Args:
        obj: the objective.
        points: values per dimension of the coarse grid.
        seed: seed of the order (a grid has no natural order; shuffling shows the spread).

    Returns:
        (scores, points) in trial order.
    """
    from sklearn.model_selection import ParameterGrid

    grid = list(ParameterGrid(to_grid(obj.space, points, rename=False)))
    order = np.random.RandomState(seed).permutation(len(grid))
    chosen = [grid[i] for i in order]
    return [obj(p) for p in chosen], chosen


def gp_history(obj: LookupObjective, trials: int, seed: int, initial: int = 5) -> tuple[list[float], Any]:
    """Gaussian-process Bayesian optimisation (``skopt.gp_minimize``, EI) on a lookup objective.

    Args:
        obj: the objective.
        trials: number of evaluations.
        seed: seed of the initial points and the optimiser.
        initial: random initial points before the GP takes over.

    Returns:
        (scores, the ``OptimizeResult``).
    """
    from skopt import gp_minimize

    dims = list(to_skopt(obj.space, rename=False).values())
    names = list(obj.space)
    res = gp_minimize(lambda x: -obj(dict(zip(names, x))), dims, n_calls=trials,
                      n_initial_points=min(initial, trials), acq_func="EI", random_state=seed)
    return [-v for v in res.func_vals], res


def tpe_history(obj: LookupObjective, trials: int, seed: int, initial: int = 5) -> list[float]:
    """Optuna's TPE sampler on a lookup objective, over the same space.

    Args:
        obj: the objective.
        trials: number of evaluations.
        seed: seed of the sampler.
        initial: random start-up trials before TPE takes over.

    Returns:
        Scores in trial order.
    """
    import warnings

    with warnings.catch_warnings():  # optuna's tqdm import warns about ipywidgets in notebooks
        warnings.simplefilter("ignore")
        import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial):
        point = {}
        for k, d in obj.space.items():
            if "values" in d:
                point[k] = trial.suggest_categorical(k, d["values"])
            elif d["int"]:
                point[k] = trial.suggest_int(k, d["low"], d["high"], log=d["log"])
            else:
                point[k] = trial.suggest_float(k, d["low"], d["high"], log=d["log"])
        return obj(point)

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(initial, trials))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=trials)
    return [t.value for t in study.trials]


# ---------------------------------------------------------------------------------------------
# A small on-disk cache of exhaustive-grid results (shared by notebooks 02 and 03)
# ---------------------------------------------------------------------------------------------


def cached_results(config: Mapping[str, Any], compute) -> tuple[pd.DataFrame, bool]:
    """A results table from ``data/cache/`` for this configuration, or ``compute()`` and store it.

    Args:
        config: everything the results depend on (JSON-able).
        compute: ``() -> DataFrame`` run on a cache miss.

    Returns:
        (results, from_cache).
    """
    path = cache_dir() / f"hpo-{config_key(config)}.json"
    if path.exists():
        try:
            payload = json.loads(path.read_text())
            if payload["config"] == json.loads(json.dumps(config)):
                return pd.DataFrame(payload["results"]), True
        except (ValueError, KeyError):
            pass
    df = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump({"config": config, "results": df.to_dict(orient="list")}, fh)
    os.replace(tmp, path)
    return df, False


def grid_table(estimator, X: np.ndarray, y: np.ndarray, space: Mapping[str, dict], points: Mapping[str, int],
               cv, cache_config: Mapping[str, Any] | None = None) -> tuple[pd.DataFrame, LookupObjective, bool]:
    """An exhaustive grid search over some dimensions of a space, kept as a ``LookupObjective``.

    Args:
        estimator: the estimator (its other hyperparameters stay fixed).
        X: tuning inputs.
        y: tuning labels.
        space: a checked space.
        points: {hyperparameter: values on its axis}, e.g. {"lr": 16, "weight_decay": 7}.
        cv: the cross-validation splitter.
        cache_config: everything the scores depend on; given, the results are cached on disk.

    Returns:
        (``results_table`` of the grid, the lookup objective, whether it came from the cache).
    """
    from sklearn.model_selection import GridSearchCV

    sub = {k: space[k] for k in points}
    grid = to_grid(sub, points)

    def compute() -> pd.DataFrame:
        search = GridSearchCV(estimator, grid, cv=cv, scoring="accuracy", refit=False).fit(X, y)
        return results_table(search)

    if cache_config is None:
        results, hit = compute(), False
    else:
        runtime = runtime_key(getattr(estimator, "device", "cpu") or "cpu")
        results, hit = cached_results({**cache_config, "grid": grid, **runtime}, compute)
    axes = {k: dim_values(sub[k], n) for k, n in points.items()}
    return results, LookupObjective.from_results(sub, axes, results), hit
