"""The papers' own MNIST tables beside ours: run notebooks at the papers' settings, write
docs/papers.md.

Usage::

    python -m nbhelpers.reporting.paper           # every run of docs/paper/, one at a time
    python -m nbhelpers.reporting.paper 04        # only some (run names or prefixes); the others
                                                  # are taken from the run log of earlier runs
    python -m nbhelpers.reporting.paper --render  # run nothing: rewrite docs/papers.md from the log

A *run* is a parameter file: ``docs/paper/<stem>.yaml`` runs notebook ``<stem>`` with the full
official MNIST and the paper's model and budget; ``docs/paper/<stem>.<variant>.yaml`` runs the same
notebook again with other parameters (another paper's model), its outputs in
``reports/paper/<variant>/``. Each run records what the notebook always records; this module reads
the published figure of each claim from ``CLAIMS``, our figure from the run's records, and writes
one table with our 95% interval, the profile's targets and each run's time, finish time and commit
(``docs/paper/paper_runs.json``, committed, keeps the latest result of every run, so the doc can be
written from runs of several sessions).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import yaml

from nbhelpers.core.params import UnknownParameterError, check_names, notebook_parameters
from nbhelpers.measure.targets import measured_text, target, verdict_text
from nbhelpers.reporting.bench import markdown_table
from nbhelpers.reporting.claims import claims_table, profile_targets
from nbhelpers.reporting.runner import (
    DEFAULT_NOTEBOOKS,
    PROJECT_DIR,
    RunResult,
    list_notebooks,
    run_all,
)

PARAMS_DIR = PROJECT_DIR / "docs" / "paper"
DEFAULT_OUT = PROJECT_DIR / "reports" / "paper"
LOG_NAME = "paper_runs.json"
#: Where the run log is kept: committed beside the profiles, so docs/papers.md can be written from
#: runs of several sessions (each run with its own commit in the doc's runs table).
LOG_DIR = PROJECT_DIR / "docs" / "paper"
#: make paper's budget (issue 31): every profile, one at a time, within 2 hours on 2 cores.
BUDGET_SECONDS = 2 * 3600.0


def _fmt(v: float, low: float = math.nan, high: float = math.nan) -> str:
    if not math.isfinite(v):
        return "not run"
    text = f"{v:.3g}"
    return text if not math.isfinite(low) else f"{text} [{low:.3g}, {high:.3g}]"


def markdown(
    runs: Mapping[str, RunResult],
    wall_seconds: float | None,
    info: Mapping[str, str],
    commits: Mapping[str, str] | None = None,
    profiles: list[str] | None = None,
) -> str:
    """The text of ``docs/papers.md``.

    Args:
        runs: run name (``<stem>`` or ``<stem>.<variant>``) -> its latest result.
        wall_seconds: wall time of this invocation's runs (None: it ran nothing, ``--render``).
        info: the machine (``nbhelpers.reporting.bench.machine_info``) and the current commit.
        commits: run name -> the commit it ran at (default: the current one for every run).
        profiles: every profile's run name, for the budget target (``budget_target``; None: no
            budget row).

    Returns:
        Markdown.
    """
    commits = commits or {}
    ok = {k: r.records for k, r in runs.items() if r.status == "ok"}
    shown = _claims_frame(claims_table(ok, {k: r.seconds for k, r in runs.items()}))
    budget = [] if profiles is None else [budget_target(runs, profiles)]
    ts = _targets_frame(profile_targets(ok) + budget)
    at = info.get("commit", "?")
    table_runs = _runs_frame(runs, commits, at)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = "".join(f"| {k} | {v} |\n" for k, v in info.items())
    total = sum(r.seconds for r in runs.values())
    invocation = (
        "this invocation ran nothing (written from the run log)"
        if wall_seconds is None
        else f"this invocation: {wall_seconds:.0f} s wall"
    )
    return f"""# The papers' MNIST tables, reproduced

Written by `make paper` (`python -m nbhelpers.reporting.paper`) on {date}, at commit {at}; each
run's own commit and finish time are in the runs table. Each run is a notebook with
`docs/paper/<run>.yaml`: the full official MNIST (all 54,000 training images less validation, the
official 10,000 test images) and the paper's model. Errors carry the Wilson 95% interval over the
10,000 test images; a difference of two models on the same images is judged by McNemar's exact
test. Rows marked "not run" are not reproduced yet and say why.

## Published against ours

{markdown_table(shown)}
## Targets of the profile

{markdown_table(ts)}
## Runs

Every run, one at a time: {total:.0f} s in all ({total / 3600:.2f} h); {invocation}.

{markdown_table(table_runs)}
## Machine

| fact | value |
|---|---|
{machine}"""


def budget_target(runs: Mapping[str, RunResult], profiles: list[str]) -> dict:
    """make paper's 2-hour budget as a target: the seconds of every profile's logged run, summed.

    Args:
        runs: run name -> its latest result (the log; runs of several sessions).
        profiles: every profile's run name.

    Returns:
        A ``target`` dict; not met while some profile has no good run (the note names them, and
        the sum is then of the others only).
    """
    missing = sorted(k for k in profiles if k not in runs or runs[k].status != "ok")
    total = sum(runs[k].seconds for k in profiles if k not in missing)
    note = f"{len(profiles) - len(missing)} of {len(profiles)} profiles, each run alone"
    t = target("make paper: every profile, one at a time", total, "<=", BUDGET_SECONDS, "s",
               note + (f"; not run: {', '.join(missing)}" if missing else ""))  # fmt: skip
    return {**t, "met": t["met"] and not missing}


def _claims_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The published-against-ours table as the doc shows it, from ``claims_table``."""
    return pd.DataFrame(
        {
            "paper": table["paper"],
            "table": table["table"],
            "model": table["setting"],
            "metric": table["metric"],
            "published": table["published"].map(lambda v: _fmt(v)),
            "ours [95% CI]": [
                _fmt(v, lo, hi) for v, lo, hi in zip(table["ours"], table["low"], table["high"])
            ],
            "ours - published": table["difference"].map(
                # float rounding of two equal figures (1.59 - 1.59 = 2e-15) reads as 0
                lambda v: "" if not math.isfinite(v) else f"{0.0 if abs(v) < 1e-9 else v:+.3g}"
            ),
            "run (s)": [
                f"{n} ({s:.0f} s)" if math.isfinite(s) else n
                for n, s in zip(table["notebook"], table["seconds"])
            ],
            "published figure": table["checked"],
        }
    )


def _targets_frame(targets: list[dict]) -> pd.DataFrame:
    """The profile's targets as the doc shows them, each with its note (where the goal comes from,
    what else the run measured)."""
    return pd.DataFrame(
        [
            {
                "target": t["name"],
                "measured": measured_text(t),
                "goal": f"{t['op']} {t['threshold']:g} {t['unit']}".strip(),
                "met": verdict_text(t),
                "note": t.get("note", ""),
            }
            for t in targets
        ],
        columns=["target", "measured", "goal", "met", "note"],
    )


def _runs_frame(runs: Mapping[str, RunResult], commits: Mapping[str, str], at: str) -> pd.DataFrame:
    """One row per run: status, seconds, finish time, commit and error."""
    return pd.DataFrame(
        [
            {
                "run": k,
                "status": r.status,
                "seconds": f"{r.seconds:.0f}",
                "finished (UTC)": r.finished_at[:16].replace("T", " "),
                "commit": commits.get(k, at),
                "error": r.error[:160],
            }
            for k, r in sorted(runs.items())
        ]
    )


def profile_runs(params_dir: Path = PARAMS_DIR) -> dict[str, Path]:
    """The runs of the profile: run name -> its parameter file, sorted by name.

    ``<stem>.yaml`` is run ``<stem>``; ``<stem>.<variant>.yaml`` is run ``<stem>.<variant>`` of the
    same notebook.

    Args:
        params_dir: the folder of parameter files.

    Returns:
        The mapping.
    """
    return {f.stem: f for f in sorted(Path(params_dir).glob("*.yaml"), key=lambda f: f.stem)}


def select_runs(names: list[str], wanted: list[str] | None) -> list[str]:
    """The runs to execute: all, or those named by ``wanted``, exactly or by prefix.

    Args:
        names: every run name.
        wanted: run names or prefixes ("04" selects both runs of notebook 04; a full run name,
            "04_weight_pruning", selects that run alone); None or empty: all.

    Returns:
        The selected names, in order.

    Raises:
        ValueError: a wanted name matches no run (it names the runs there are).
    """
    if not wanted:
        return list(names)
    unknown = [w for w in wanted if not any(n.startswith(w) for n in names)]
    if unknown:
        raise ValueError(f"no run named {unknown}; the runs are {list(names)}")
    return [n for n in names if any(n == w or (w not in names and n.startswith(w)) for w in wanted)]


def load_log(out_dir: Path) -> dict[str, dict]:
    """The run log: run name -> {"result": a ``RunResult`` as a dict, "commit": str}."""
    try:
        return json.loads((Path(out_dir) / LOG_NAME).read_text())
    except (OSError, ValueError):
        return {}


def save_log(out_dir: Path, log: Mapping[str, dict]) -> None:
    """Write the run log atomically (a half-written log never replaces a good one)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(out_dir) / f".{LOG_NAME}.tmp"
    tmp.write_text(json.dumps(log, indent=1, default=str))
    os.replace(tmp, Path(out_dir) / LOG_NAME)


def _dirty(at: str) -> bool:
    """Whether the tree differs from its commit (``bench.commit`` ends in "+changes"); says why the
    runs cannot start when it does."""
    if at.endswith("+changes"):
        print(
            "error: tracked files differ from the last commit, so docs/papers.md could not name "
            "the code that produced it: commit first, or pass --allow-dirty",
            file=sys.stderr,
        )
        return True
    return False


def _parser() -> argparse.ArgumentParser:
    """The command line of ``main``."""
    ap = argparse.ArgumentParser(
        prog="python -m nbhelpers.reporting.paper", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "runs", nargs="*", help="run names or prefixes (default: every docs/paper/*.yaml)"
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument(
        "--log", type=Path, default=LOG_DIR, help=f"folder of the run log {LOG_NAME} (committed)"
    )
    ap.add_argument("--doc", type=Path, default=PROJECT_DIR / "docs" / "papers.md")
    ap.add_argument(
        "--render", action="store_true", help="run nothing; write the doc from the run log"
    )
    ap.add_argument(
        "--allow-dirty",
        action="store_true",
        help="run although tracked files differ from the commit (the doc then says +changes)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns 1 if any run failed, 2 for a profile naming a parameter
    its notebook does not have or for a working tree that differs from its commit without
    ``--allow-dirty`` (nothing runs then)."""
    from nbhelpers.reporting.bench import commit, machine_info

    ap = _parser()
    args = ap.parse_args(argv)
    if not args.render and not args.allow_dirty and _dirty(commit()):
        return 2
    files = profile_runs()
    try:
        chosen = [] if args.render else select_runs(list(files), args.runs)
    except ValueError as err:
        ap.error(str(err))
    notebooks = {nb.stem: nb for nb in list_notebooks(DEFAULT_NOTEBOOKS)}
    missing = sorted({k.split(".")[0] for k in chosen} - set(notebooks))
    if missing:
        named = sorted(str(files[k]) for k in chosen if k.split(".")[0] in missing)
        ap.error(f"{named} name notebooks that do not exist: {missing}")
    profiles = {key: dict(yaml.safe_load(files[key].read_text()) or {}) for key in chosen}
    try:  # every profile checked before the first run of hours starts
        for key, params in profiles.items():
            stem = key.split(".")[0]
            check_names(params, notebook_parameters(notebooks[stem]), f"{stem} ({files[key]})")
    except UnknownParameterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log, at, t0 = load_log(args.log), commit(), time.perf_counter()
    for key in chosen:
        stem, _, variant = key.partition(".")
        params = profiles[key]
        (result,) = run_all(
            [notebooks[stem]],
            args.out / variant if variant else args.out,
            jobs=1,
            parameters={stem: params},
        )
        log[key] = {"result": asdict(result), "commit": at}
        save_log(args.log, log)
    wall = time.perf_counter() - t0
    runs = {k: RunResult(**v["result"]) for k, v in log.items() if k in files}
    commits = {k: v["commit"] for k, v in log.items() if k in files}
    info = {**machine_info(), "commit": at}
    text = markdown(runs, wall if chosen else None, info, commits, sorted(files))
    args.doc.write_text(text, encoding="utf-8")
    print(f"wrote {args.doc}")
    return 1 if any(runs[k].status != "ok" for k in chosen) else 0


if __name__ == "__main__":
    sys.exit(main())
