"""Run notebooks with papermill, render them to HTML and write ``reports/index.html``.

Usage::

    python -m nbhelpers.reporting.runner                      # every notebook at its defaults
    python -m nbhelpers.reporting.runner 00_baseline --jobs 2 # selected notebooks
    python -m nbhelpers.reporting.runner --params-dir tests/params  # one YAML per notebook
    python -m nbhelpers.reporting.runner --params my.yaml     # {stem: {PARAM: value}} in one file

A failing notebook does not stop the others; its error shows in the index, and the last good
report of that notebook is kept (the failed run is written beside it as ``<stem>.failed.*``).
This module never imports torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

from nbhelpers.core import record as rec
from nbhelpers.core.params import UnknownParameterError, check_names, notebook_parameters
from nbhelpers.core.paths import project_dir, reports_dir
from nbhelpers.reporting.pages import index_html, render_html

PROJECT_DIR = project_dir()  # resolved once, from the working directory (see nbhelpers.core.paths)
DEFAULT_NOTEBOOKS = PROJECT_DIR / "notebooks"
DEFAULT_OUT = reports_dir()
BENCH_DOC = PROJECT_DIR / "docs" / "benchmarks.md"


@dataclass
class RunResult:
    """The outcome of running one notebook."""

    stem: str
    status: str  # "ok" or "failed"
    seconds: float
    parameters: dict = field(default_factory=dict)
    error: str = ""
    records: dict = field(default_factory=dict)
    finished_at: str = ""


def list_notebooks(folder: Path = DEFAULT_NOTEBOOKS, names: list[str] | None = None) -> list[Path]:
    """The notebooks to run: all ``*.ipynb`` in ``folder`` or those named (by stem or path).

    Args:
        folder: where the notebooks are.
        names: stems (``00_baseline``), file names or paths; None or empty means all.

    Returns:
        Sorted notebook paths.
    """
    every = sorted(p for p in Path(folder).glob("*.ipynb") if not p.name.startswith("."))
    if not names:
        return every
    chosen = []
    for n in names:
        p = Path(n)
        if p.suffix == ".ipynb" and p.exists():
            chosen.append(p)
            continue
        match = [q for q in every if q.stem == p.stem or q.stem.startswith(p.stem)]
        if not match:
            raise SystemExit(
                f"no notebook named {n!r}; choose from: {', '.join(q.stem for q in every)}"
            )
        chosen += match
    return sorted(set(chosen))


def load_parameters(
    stem: str, params_file: Path | None = None, params_dir: Path | None = None
) -> dict:
    """Papermill parameters of one notebook from a mapping file or a folder of per-notebook YAML.

    Args:
        stem: the notebook's stem.
        params_file: YAML mapping ``{stem: {PARAM: value}}``.
        params_dir: folder of ``<stem>.yaml`` files, each ``{PARAM: value}``.

    Returns:
        The parameters (empty for the notebook's defaults).
    """
    if params_file is not None:
        data = yaml.safe_load(Path(params_file).read_text()) or {}
        return dict(data.get(stem) or {})
    if params_dir is not None and (Path(params_dir) / f"{stem}.yaml").exists():
        return dict(yaml.safe_load((Path(params_dir) / f"{stem}.yaml").read_text()) or {})
    return {}


def _error_text(exc: BaseException) -> str:
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:
        return f"{ename}: {evalue}"
    return f"{type(exc).__name__}: {exc}"


def run_notebook(
    src: Path,
    out_dir: Path = DEFAULT_OUT,
    parameters: dict | None = None,
    kernel: str = "python3",
    timeout: int | None = None,
    progress: bool = False,
    html_out: bool = True,
) -> RunResult:
    """Execute one notebook with papermill into ``out_dir`` and render its HTML.

    On success ``<stem>.ipynb`` and ``<stem>.html`` are replaced; on failure they are left as they
    were and the failed run is written to ``<stem>.failed.ipynb`` and ``.failed.html``.

    Args:
        src: the notebook.
        out_dir: the reports folder.
        parameters: papermill parameters overriding the notebook's defaults.
        kernel: the Jupyter kernel.
        timeout: seconds allowed per cell (None: no limit).
        progress: show papermill's per-cell progress bar.
        html_out: render HTML.

    Returns:
        The ``RunResult`` with the recorded values.
    """
    import papermill as pm

    # absolute: papermill runs the kernel with cwd=the notebook folder and changes the working
    # directory of this process meanwhile, so a relative path would land in the wrong folder
    src, out_dir = Path(src).resolve(), Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = src.stem
    running = out_dir / f".{stem}.running.ipynb"
    parameters = dict(parameters or {})
    t0 = time.perf_counter()
    error = ""
    try:
        pm.execute_notebook(
            str(src),
            str(running),
            parameters=parameters,
            kernel_name=kernel,
            cwd=str(src.parent),
            progress_bar=progress,
            execution_timeout=timeout,
            log_output=False,
        )
    except BaseException as exc:  # noqa: BLE001 - any failure is reported, not raised
        error = _error_text(exc)
        if isinstance(exc, KeyboardInterrupt):
            raise
    seconds = time.perf_counter() - t0
    records = rec.read(running) if running.exists() else {}
    finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if not error:
        os.replace(running, out_dir / f"{stem}.ipynb")
        for stale in (out_dir / f"{stem}.failed.ipynb", out_dir / f"{stem}.failed.html"):
            stale.unlink(missing_ok=True)
        if html_out:
            render_html(out_dir / f"{stem}.ipynb", out_dir / f"{stem}.html")
        return RunResult(stem, "ok", seconds, parameters, "", records, finished)
    failed = out_dir / f"{stem}.failed.ipynb"
    if running.exists():
        os.replace(running, failed)
        if html_out:
            try:
                render_html(failed, out_dir / f"{stem}.failed.html")
            except Exception:  # noqa: BLE001 - the error text is still in the index
                pass
    return RunResult(stem, "failed", seconds, parameters, error, records, finished)


def load_runs(out_dir: Path) -> dict[str, dict]:
    """The run log ``runs.json`` of a reports folder (empty when absent or unreadable)."""
    try:
        return json.loads((Path(out_dir) / "runs.json").read_text())
    except (OSError, ValueError):
        return {}


def save_run(out_dir: Path, result: RunResult) -> dict[str, dict]:
    """Add a run to ``runs.json``, keeping the last good run of each notebook beside the latest.

    Args:
        out_dir: the reports folder.
        result: the run.

    Returns:
        The whole updated log.
    """
    runs = load_runs(out_dir)
    entry = runs.get(result.stem, {})
    entry["latest"] = asdict(result)
    if result.status == "ok":
        entry["last_good"] = asdict(result)
    runs[result.stem] = entry
    tmp = Path(out_dir) / ".runs.json.tmp"
    tmp.write_text(json.dumps(runs, indent=1, default=str))
    os.replace(tmp, Path(out_dir) / "runs.json")
    return runs


def write_index(out_dir: Path) -> Path:
    """Write ``index.html`` for everything in the run log of ``out_dir``.

    Args:
        out_dir: the reports folder.

    Returns:
        The path of ``index.html``.
    """
    from nbhelpers.measure import leaderboard, lm_leaderboard, transfer

    runs = load_runs(out_dir)
    records = {stem: (r.get("last_good") or {}).get("records") or {} for stem, r in runs.items()}
    path = Path(out_dir) / "index.html"
    sections = [
        leaderboard.safe_html_section(records),
        lm_leaderboard.html_section(records),
        transfer.html_section(records),
    ]
    path.write_text(index_html(runs, sections), encoding="utf-8")
    return path


def expected_seconds(
    stems: list[str], out_dir: Path = DEFAULT_OUT, bench_doc: Path = BENCH_DOC
) -> dict[str, float]:
    """How long each notebook took last time, to start the longest first.

    Args:
        stems: the notebooks' stems.
        out_dir: a reports folder: its ``runs.json`` gives each notebook's last good run.
        bench_doc: ``docs/benchmarks.md``: its "Run times" table answers for notebooks never run
            in ``out_dir`` (a fresh clone).

    Returns:
        stem -> seconds (0.0 where neither source knows the notebook).
    """
    runs = load_runs(out_dir)
    table: dict[str, float] = {}
    try:
        for line in Path(bench_doc).read_text(encoding="utf-8").splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 3 and cells[1] == "ok":
                try:
                    table[cells[0]] = float(cells[2])
                except ValueError:
                    continue
    except OSError:
        pass
    out = {}
    for stem in stems:
        good = (runs.get(stem) or {}).get("last_good") or {}
        out[stem] = float(good.get("seconds") or table.get(stem) or 0.0)
    return out


def longest_first(notebooks: list[Path], seconds: Mapping[str, float]) -> list[Path]:
    """The notebooks, longest expected run first (ties keep their order).

    With ``jobs`` notebooks at a time, starting the longest first keeps one long notebook from
    running alone at the end (the longest-processing-time rule).

    Args:
        notebooks: the notebooks.
        seconds: stem -> expected seconds (``expected_seconds``).

    Returns:
        The same paths, reordered.
    """
    return sorted(notebooks, key=lambda nb: -seconds.get(nb.stem, 0.0))


def run_all(
    notebooks: list[Path],
    out_dir: Path = DEFAULT_OUT,
    params_file: Path | None = None,
    params_dir: Path | None = None,
    jobs: int = 1,
    timeout: int | None = None,
    kernel: str = "python3",
    parameters: Mapping[str, dict] | None = None,
) -> list[RunResult]:
    """Run notebooks (``jobs`` at a time, longest first), log each run, rewrite the index.

    Args:
        notebooks: the notebooks.
        out_dir: the reports folder.
        params_file: YAML mapping of parameters per notebook stem.
        params_dir: folder of per-notebook YAML parameter files.
        jobs: notebooks run at once.
        timeout: seconds allowed per cell.
        kernel: Jupyter kernel name.
        parameters: notebook stem -> parameters, given directly (instead of the files).

    Returns:
        The results, in the order of ``notebooks``.

    Raises:
        UnknownParameterError: a parameter some notebook does not have (a misspelt name), before
            any notebook runs or any file is written.
    """
    from tqdm.auto import tqdm

    params = {
        nb.stem: dict(parameters[nb.stem])
        if parameters is not None and nb.stem in parameters
        else load_parameters(nb.stem, params_file, params_dir)
        for nb in notebooks
    }
    for nb in notebooks:
        check_names(params[nb.stem], notebook_parameters(nb), nb.stem)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # kernels inherit the environment: share the cores between notebooks run at once, not
    # oversubscribe
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, jobs))))
    # no progress bars in reports: a widget cannot show in static HTML, text bars only add noise
    os.environ.setdefault("TQDM_DISABLE", "1")
    results: dict[str, RunResult] = {}
    with (
        ThreadPoolExecutor(max_workers=max(1, jobs)) as pool,
        tqdm(total=len(notebooks), desc="notebooks", unit="nb") as bar,
    ):
        started = longest_first(notebooks, expected_seconds([nb.stem for nb in notebooks], out_dir))
        futures = {
            pool.submit(run_notebook, nb, out_dir, params[nb.stem], kernel, timeout): nb
            for nb in started
        }
        for fut in as_completed(futures):
            r = fut.result()
            results[r.stem] = r
            save_run(out_dir, r)
            write_index(out_dir)
            bar.write(
                f"[{r.status}] {r.stem} in {r.seconds:.1f} s" + (f": {r.error}" if r.error else "")
            )
            bar.update(1)
    return [results[nb.stem] for nb in notebooks]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns 1 if any notebook failed, 2 for a parameter no notebook
    has (nothing runs then)."""
    ap = argparse.ArgumentParser(
        prog="python -m nbhelpers.reporting.runner", description=__doc__.split("\n")[0]
    )
    ap.add_argument("notebooks", nargs="*", help="stems or paths (default: every notebook)")
    ap.add_argument("--notebooks-dir", type=Path, default=DEFAULT_NOTEBOOKS)
    ap.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="reports folder (default: reports/)"
    )
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--params", type=Path, help="YAML {stem: {PARAM: value}}")
    group.add_argument("--params-dir", type=Path, help="folder of <stem>.yaml parameter files")
    ap.add_argument("--jobs", type=int, default=1, help="notebooks run in parallel")
    ap.add_argument("--timeout", type=int, default=None, help="seconds allowed per cell")
    ap.add_argument("--kernel", default="python3")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be an integer >= 1, got {args.jobs}")
    for p in (args.params, args.params_dir):
        if p is not None and not p.exists():
            ap.error(f"parameter path {p} does not exist")
    nbs = list_notebooks(args.notebooks_dir, args.notebooks)
    try:
        results = run_all(
            nbs, args.out, args.params, args.params_dir, args.jobs, args.timeout, args.kernel
        )
    except UnknownParameterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = [r.stem for r in results if r.status != "ok"]
    print(
        f"{len(results) - len(failed)} ok, {len(failed)} failed; index: {args.out / 'index.html'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
