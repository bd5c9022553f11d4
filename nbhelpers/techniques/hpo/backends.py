"""Where the scikit-learn searches run: local loky processes or a Dask cluster, through joblib.

``backend(name, n_jobs, scheduler)`` is a context manager; searches inside leave their own
``n_jobs`` at None so that the backend decides. A scheduler address is checked by connecting a
``distributed.Client`` with a timeout: an unreachable or silent address fails within seconds with a
``ParameterError`` naming ``DASK_SCHEDULER`` instead of hanging the notebook. (The client's own
``timeout`` covers reaching the address but not the handshake that follows, which waits forever
on a server that accepts connections and never answers; so the first connection runs under a
deadline, on its own event loop.)

On a cluster the code reaches the workers as an installed package: ``nbhelpers`` and the libraries
a fit needs must be installed in every worker's environment. ``check_versions`` asks every worker
for its versions when the client connects and names the worker and the package that differ. Each
worker sets torch's thread count to its own number of threads (``torch_threads_plugin``), and an
estimator built with ``device="auto"`` picks the worker's own device when it fits.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from nbhelpers.core.params import ParameterError, check_choice, check_int

BACKENDS = ("loky", "dask")
#: The notebook parameter that holds the scheduler address (named in errors).
SCHEDULER_PARAM = "DASK_SCHEDULER"
#: Packages whose versions must be the same on the client and on every worker.
VERSIONED = ("nbhelpers", "torch", "scikit-learn", "skorch", "numpy", "dask", "distributed")


def package_versions(packages: tuple[str, ...] = VERSIONED) -> dict[str, str]:
    """Installed versions of ``packages`` in this process ("not installed" for a missing one).

    Self-contained (imports inside), so Dask can ship it by value to a worker that lacks nbhelpers.
    """
    import platform
    from importlib import metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {"python": platform.python_version(), **{p: version(p) for p in packages}}


def check_versions(client: Any, name: str = SCHEDULER_PARAM, address: str = "") -> dict:
    """Check that every worker of a Dask client runs this process's versions of ``VERSIONED``.

    Args:
        client: a connected ``distributed.Client`` (anything with ``run``).
        name: parameter named in errors.
        address: the scheduler address, for the error.

    Returns:
        worker address -> its versions (all equal to this process's).

    Raises:
        ParameterError: no worker, or a worker whose Python or a package differs (named, with both
            versions).
    """
    here = package_versions()
    # by value: a worker without nbhelpers can still answer (and be told what it lacks)
    workers = client.run(_by_value(package_versions))
    if not workers:
        raise ParameterError(name, address, "a Dask scheduler with at least one worker")
    diffs = [
        f"{w} has {pkg} {v} (here {here[pkg]})"
        for w, got in sorted(workers.items())
        for pkg, v in got.items()
        if here.get(pkg) != v
    ]
    if diffs:
        raise ParameterError(
            name,
            address,
            "workers with this client's packages; "
            + "; ".join(diffs[:6])
            + " (install the same versions, e.g. pip install -r requirements.txt, on every worker)",
        )
    return workers


def _by_value(fn: Any) -> Any:
    """A copy of a module-level function that cloudpickle serializes by value."""
    import types

    return types.FunctionType(
        fn.__code__, {"__builtins__": __builtins__}, fn.__name__, fn.__defaults__, fn.__closure__
    )


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
        check_scheduler(SCHEDULER_PARAM, scheduler)  # fails within seconds if unreachable
    elif not isinstance(scheduler, str):
        raise ParameterError(SCHEDULER_PARAM, scheduler, "a string ('' or tcp://host:port)")
    check_int("N_JOBS", n_jobs, minimum=1)
    return backend


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


def client_answers(address: str, timeout: float) -> None:
    """Connect a ``distributed.Client`` to ``address`` and close it, all within ``timeout`` seconds.

    Runs on a private event loop in a thread (a notebook's own loop is already running), so a
    silent server is abandoned at the deadline instead of blocking the caller.

    Args:
        address: the scheduler address.
        timeout: seconds allowed to reach the address; the whole check ends by ``timeout + 0.5``.

    Returns:
        None; raises what the connection raised, or ``TimeoutError`` at the deadline.
    """
    from distributed import Client

    async def attempt() -> None:
        client = Client(address, timeout=f"{timeout}s", asynchronous=True, set_as_default=False)
        try:
            await client
        finally:  # also when the deadline cancels the handshake
            await client.close()

    outcome: list[BaseException | None] = []

    def run() -> None:
        try:  # the client's own timeout first (its error says more), then the deadline
            asyncio.run(asyncio.wait_for(attempt(), timeout + 0.5))
            outcome.append(None)
        except BaseException as err:  # reported to the caller, never raised in the thread
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True, name="dask-scheduler-check")
    thread.start()
    thread.join(timeout + 2.5)
    if not outcome or isinstance(outcome[0], asyncio.TimeoutError):
        raise TimeoutError(f"no answer from a Dask scheduler within {timeout} s")
    if outcome[0] is not None:
        raise outcome[0]


def connect(name: str, address: str, timeout: float = 3.0, default: bool = True) -> Any:
    """A ``distributed.Client`` of the scheduler at ``address``, or a ParameterError within seconds.

    Args:
        name: parameter named in errors (``DASK_SCHEDULER``).
        address: the scheduler address.
        timeout: seconds allowed to connect and hear the scheduler answer.
        default: make it the default client (joblib's dask backend uses the default one).

    Returns:
        The connected client (close it when done).
    """
    from distributed import Client

    host, port = parse_scheduler(name, address)
    t0 = time.perf_counter()
    try:
        client_answers(address, timeout)  # within the deadline, or not at all
        return Client(address, timeout=f"{timeout}s", set_as_default=default)
    except Exception as err:  # refused, timed out, or something that is not a scheduler
        raise _unreachable(name, address, host, port, t0, err) from None


def _unreachable(
    name: str, address: str, host: str, port: int, t0: float, err: BaseException
) -> ParameterError:
    """The error for a scheduler that did not answer: parameter, address, time taken, cause."""
    return ParameterError(
        name,
        address,
        f"a reachable Dask scheduler: connecting to {host}:{port} failed after "
        f"{time.perf_counter() - t0:.1f} s ({err.__class__.__name__}: {str(err)[:120]}); "
        "leave it '' for a local cluster",
    )


def check_scheduler(name: str, address: str, timeout: float = 3.0) -> str:
    """Check that a Dask scheduler answers at ``address`` within seconds (fail fast, never hang).

    Args:
        name: parameter named in errors (``DASK_SCHEDULER``).
        address: the scheduler address; '' means a local cluster and is not probed.
        timeout: seconds allowed to connect a client.

    Returns:
        The address, unchanged.
    """
    if address == "":
        return address
    host, port = parse_scheduler(name, address)
    t0 = time.perf_counter()
    try:
        client_answers(address, timeout)
    except Exception as err:  # refused, timed out, or something that is not a scheduler
        raise _unreachable(name, address, host, port, t0, err) from None
    return address


def torch_threads_plugin() -> Any:
    """A Dask ``WorkerPlugin`` that sets torch's thread count in each worker to the worker's own.

    Registered by ``backend``; a worker with one thread (the local default) runs its fits on one
    core, so parallel fits do not oversubscribe the machine. (The class is built here so that
    importing this module does not import ``distributed``.)

    Returns:
        The plugin instance (its ``name`` makes a second registration replace the first).
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    class TorchThreads(WorkerPlugin):
        name = "nbhelpers-torch-threads"

        def setup(self, worker: Any) -> None:
            import torch

            torch.set_num_threads(max(1, int(worker.state.nthreads)))

    return TorchThreads()


@contextmanager
def backend(
    name: str = "loky", n_jobs: int = 1, scheduler: str = "", timeout: float = 3.0
) -> Iterator[dict]:
    """Run the scikit-learn searches inside on loky processes or on a Dask cluster (joblib backend).

    With ``dask`` and an empty ``scheduler`` a local cluster of ``n_jobs`` worker processes with one
    thread each is started (each fit in its own process, as on a real cluster); with an address, the
    client connects there, waits up to ``timeout`` seconds for a worker, and checks every worker's
    versions (``check_versions``). Every worker sets torch's thread count to its own.

    Args:
        name: "loky" or "dask" (the ``BACKEND`` parameter).
        n_jobs: parallel fits (the ``N_JOBS`` parameter).
        scheduler: '' for a local cluster, else the address of a running Dask scheduler.
        timeout: seconds allowed to reach the scheduler, and then to see its first worker.

    Yields:
        {"backend", "n_jobs", "scheduler", "workers"}: what the searches run on.
    """
    import joblib

    check_choice("BACKEND", name, BACKENDS)
    check_int("N_JOBS", n_jobs, minimum=1)
    if name == "loky":
        with joblib.parallel_backend("loky", n_jobs=n_jobs):
            yield {"backend": "loky", "n_jobs": n_jobs, "scheduler": "", "workers": 0}
        return
    from distributed import Client, LocalCluster

    cluster = None
    if scheduler:
        client = connect(SCHEDULER_PARAM, scheduler, timeout)
    else:
        cluster = LocalCluster(
            n_workers=n_jobs,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        )
        client = Client(cluster)
    try:
        if scheduler:
            _wait_for_a_worker(client, scheduler, timeout)
            check_versions(client, SCHEDULER_PARAM, scheduler)
        plugin = torch_threads_plugin()
        client.register_plugin(plugin, name=plugin.name)
        workers = len(client.scheduler_info()["workers"])
        with joblib.parallel_backend("dask", n_jobs=n_jobs):
            yield {
                "backend": "dask",
                "n_jobs": n_jobs,
                "scheduler": client.scheduler.address,
                "workers": workers,
            }
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _wait_for_a_worker(client: Any, address: str, timeout: float) -> None:
    """Wait up to ``timeout`` seconds for the scheduler to have a worker (ParameterError if not)."""
    try:
        client.wait_for_workers(1, timeout=timeout)
    except Exception:  # distributed raises TimeoutError; any failure means no worker to run on
        raise ParameterError(
            SCHEDULER_PARAM, address, f"a Dask scheduler with a worker (none within {timeout} s)"
        ) from None
