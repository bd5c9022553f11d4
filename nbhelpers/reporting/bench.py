"""The benchmark: run every notebook at its defaults and write ``docs/benchmarks.md``.

Usage::

    python -m nbhelpers.reporting.bench                # all notebooks, one at a time
    python -m nbhelpers.reporting.bench --jobs 2       # faster; notebooks then share the cores
    python -m nbhelpers.reporting.bench --empty-cache  # every baseline trained anew

Every target a notebook records (``targets``, see ``nbhelpers.measure.targets``) is listed with its
measured figure and verdict; every speed figure is a ratio measured side by side within one
notebook run (``comparison``); the wall time of each notebook and of the whole suite closes the
file.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from nbhelpers.core.paths import cache_dir
from nbhelpers.measure import leaderboard, lm_leaderboard, transfer
from nbhelpers.measure.targets import measured_text, verdict_text
from nbhelpers.reporting.runner import (
    DEFAULT_NOTEBOOKS,
    DEFAULT_OUT,
    PROJECT_DIR,
    RunResult,
    list_notebooks,
    run_all,
)


def machine_info() -> dict[str, str]:
    """The machine the benchmark ran on (``nbhelpers.core.machine.describe``) plus the OS, as text.

    Returns:
        name -> description.
    """
    from nbhelpers.core.machine import describe

    return {**{k: str(v) for k, v in describe("cpu").items()}, "os": platform.platform()}


def commit() -> str:
    """The short hash of the checked-out commit (with "+changes" when the tree differs), or
    "unknown"."""
    import subprocess

    try:

        def run(*a: str) -> str:
            return subprocess.run(
                ["git", *a], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()

        return run("rev-parse", "--short", "HEAD") + (
            "+changes" if run("status", "--porcelain", "-uno") else ""
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def targets_frame(results: list[RunResult]) -> pd.DataFrame:
    """Every recorded target of every notebook (records ``targets`` and ``targets_*``), one row
    each.

    Args:
        results: the notebook runs.

    Returns:
        Columns notebook, target, measured, goal, met, note.
    """
    rows = []
    for r in results:
        lists = [
            v for k, v in sorted(r.records.items()) if k == "targets" or k.startswith("targets_")
        ]
        for t in (t for lst in lists for t in (lst or [])):
            verdict = verdict_text(t)
            rows.append(
                {
                    "notebook": r.stem,
                    "target": t["name"],
                    "measured": measured_text(t),
                    "goal": f"{t['op']} {t['threshold']:.4g} {t['unit']}".strip(),
                    "met": verdict if t["met"] else f"**{verdict.replace('NO', 'no')}**",
                    "note": t.get("note", ""),
                }
            )
    return pd.DataFrame(rows, columns=["notebook", "target", "measured", "goal", "met", "note"])


def markdown_table(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub markdown table ("_none_" when empty), pipes in cells escaped."""
    if df.empty:
        return "_none_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(str(row[c]).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def cache_files(folder: Path) -> int:
    """Files in the model cache folder (0 when it does not exist).

    Args:
        folder: the cache folder.

    Returns:
        The number of files under it.
    """
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _speed_frame(records: dict[str, dict]) -> pd.DataFrame:
    """Every optimized model against its notebook's baseline, as the benchmark doc shows it."""
    board = leaderboard.build(records)
    return leaderboard.readable(board).loc[
        ~board["is_baseline"].astype(bool).to_numpy(),
        [
            "notebook",
            "model",
            "change, points [95% CI]",
            "verdict",
            "McNemar p",
            "times smaller",
            "speed-up b1",
            "speed-up b256",
        ],
    ]


def _runs_frame(results: list[RunResult]) -> pd.DataFrame:
    """Each notebook's status, wall seconds and error, as the doc's run-times table shows them."""
    return pd.DataFrame(
        [
            {
                "notebook": r.stem,
                "status": r.status,
                "wall seconds": f"{r.seconds:.1f}",
                "error": r.error[:120],
            }
            for r in results
        ]
    )


def markdown(
    results: list[RunResult],
    wall_seconds: float,
    jobs: int,
    info: dict[str, str],
    cache: str = "not recorded",
) -> str:
    """The text of ``docs/benchmarks.md``.

    Args:
        results: the notebook runs.
        wall_seconds: wall time of the whole suite.
        jobs: notebooks run at once.
        info: the ``machine_info()`` description.
        cache: what the model cache held when the run started (run times depend on it).

    Returns:
        Markdown.
    """
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    targets = targets_frame(results)
    met = int((targets["met"] == "yes").sum()) if not targets.empty else 0
    good = {r.stem: r.records for r in results if r.status == "ok"}
    speed = _speed_frame(good)
    runs = _runs_frame(results)
    return (
        f"""# Benchmarks

Written by `make bench` (`python -m nbhelpers.reporting.bench --jobs {jobs}`) on {date}, at
commit {commit()}.

| machine | |
|---|---|
"""
        + "".join(f"| {k} | {v} |\n" for k, v in info.items())
        + f"""
Every notebook ran at its default parameters. Accuracy is on the held-out test split. Speed-ups
are ratios of median latencies measured side by side in one notebook run, with one thread
(`nbhelpers.measure.latency`). They hold for this CPU only: int8 speed in particular depends on
its extensions (with VNNI, 8-bit dot products accumulate in one instruction; without it int8 can be
slower than fp32), and `int8_reduce_range` above says whether int8 weights used 7 bits here.

## Targets each notebook sets itself (reason and citation there): {met} of {len(targets)} met

{markdown_table(targets)}
## Every optimized model against the baseline measured in the same run

change: test-accuracy change in points against the baseline, with its paired 95% interval over the
same test images ("within noise": the interval contains zero) and McNemar's exact p; times smaller:
on disk; speed-up: times faster at batch 1 / 256.

{markdown_table(speed)}
## The transformer language model: every compressed model against the baseline of the same run

{lm_leaderboard.INTRO}

{markdown_table(lm_leaderboard.readable(lm_leaderboard.build(good)))}
## Does it transfer? Each technique on MNIST beside the transformer language model

MNIST: accuracy change in points with its paired 95% interval; transformer: bits per character
against its baseline with a paired block-bootstrap interval (negative is better); targets as
measured against their goal.

{transfer.markdown(good)}

## Run times

Whole suite: {wall_seconds:.0f} s wall ({jobs} notebook(s) at a time).
Model cache at the start: {cache}.

{markdown_table(runs)}"""
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns 1 if any notebook failed."""
    ap = argparse.ArgumentParser(
        prog="python -m nbhelpers.reporting.bench", description=__doc__.split("\n")[0]
    )
    ap.add_argument("notebooks", nargs="*", help="stems (default: every notebook)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--doc", type=Path, default=PROJECT_DIR / "docs" / "benchmarks.md")
    ap.add_argument(
        "--empty-cache",
        action="store_true",
        help="run with an empty temporary model cache, so every baseline is trained anew",
    )
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be an integer >= 1, got {args.jobs}")
    nbs = list_notebooks(DEFAULT_NOTEBOOKS, args.notebooks)
    saved = os.environ.get("NBHELPERS_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="nbhelpers-cache-") as tmp:
        try:
            if args.empty_cache:
                # the kernels inherit it; data/cache/ is left alone
                os.environ["NBHELPERS_CACHE_DIR"] = tmp
                cache = (
                    "empty (a temporary folder: every baseline and lookup table was built in "
                    "this run)"
                )
            else:
                cache = f"{cache_files(cache_dir())} file(s) in {cache_dir()}"
            t0 = time.perf_counter()
            results = run_all(nbs, args.out, jobs=args.jobs)
            wall = time.perf_counter() - t0
        finally:
            if saved is None:
                os.environ.pop("NBHELPERS_CACHE_DIR", None)
            else:
                os.environ["NBHELPERS_CACHE_DIR"] = saved
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(markdown(results, wall, args.jobs, machine_info(), cache), encoding="utf-8")
    print(f"wrote {args.doc}")
    return 1 if any(r.status != "ok" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
