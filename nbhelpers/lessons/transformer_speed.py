"""Notebook 16's lesson code: the character transformer's rounding tolerances, the compile stages
(each first call timed, a failure kept as its reason), the equality checks, speed tables per
workload, the figure, the target with the compile time beside it and the facts table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import torch

from nbhelpers.core.params import ParameterError, check_int, check_list
from nbhelpers.measure.facts import fact_table
from nbhelpers.measure.targets import target, targets_table
from nbhelpers.techniques import compilation

#: The issue's target: the compiled training step at least this much faster than eager.
MIN_TRAIN_SPEEDUP = 1.3
#: The most inference batch sizes: each compiles its own graph (``dynamic=False``).
MAX_BATCH_SIZES = 4
#: The timed variants, the reference first.
EAGER, WRITTEN, COMPILED = "eager, SDPA", "eager, written out", "compiled, SDPA"
#: The reason every compiled row gives when the notebook's COMPILE is False.
SKIPPED = "skipped: COMPILE is False"
#: The training workload's name in the speed tables.
TRAIN = "training step"
#: The compile stages that are not a forward at one batch size: the compiler's start-up (a
#: one-line function) and the training step's forward and backward.
START_STAGE, TRAIN_STAGE = "compiler start-up", "training: forward + backward"


def check_batch_sizes(name: str, values: Any) -> list[int]:
    """Check a list of inference batch sizes: 1 to ``MAX_BATCH_SIZES`` positive integers.

    Args:
        name: the parameter named in errors.
        values: the given list.

    Returns:
        The distinct sizes, ascending.
    """
    sizes = sorted(set(check_list(name, values, lambda n, v: check_int(n, v, minimum=1))))
    if len(sizes) > MAX_BATCH_SIZES:
        raise ParameterError(name, values, f"at most {MAX_BATCH_SIZES} distinct positive integers "
                             "(each batch size compiles its own graph)")  # fmt: skip
    return sizes


def workload(batch: int) -> str:
    """The name of the inference workload at one batch size, e.g. "forward, batch 32"."""
    return f"forward, batch {batch}"


def sdpa_backend(q: torch.Tensor) -> str:
    """The kernel ``F.scaled_dot_product_attention`` picks for causal self-attention of ``q``.

    Args:
        q: (batch, heads, tokens, head_dim) queries (keys and values of the same shape).

    Returns:
        The ``torch.nn.attention.SDPBackend`` name (e.g. "FLASH_ATTENTION"), or "unknown" where
        torch does not say.
    """
    try:
        from torch.nn.attention import SDPBackend

        return SDPBackend(torch._fused_sdp_choice(q, q, q, is_causal=True)).name
    except Exception:  # noqa: BLE001 - a private helper: any failure means "not known"
        return "unknown"


def reductions(depth: int) -> int:
    """Sums in a row from the input to a logit: per block two LayerNorms, q/k/v, scores, softmax,
    weights x values, output projection, MLP in and out (9); the final LayerNorm and the head."""
    return 9 * check_int("depth", depth, minimum=1) + 2


def tolerances(
    width: int, depth: int, window: int, train_batch: int, vocab: int, scales: Mapping[str, float]
) -> dict[str, float]:
    """``compilation.rounding_tolerance`` for the model's logits, its loss and its gradients.

    Args:
        width: the model width (the MLP's hidden width is 4x).
        depth: blocks.
        window: tokens per window.
        train_batch: windows of the training batch.
        vocab: the vocabulary size (the loss's log-sum-exp).
        scales: {"logits", "loss", "grads"}: the largest |value| of each compared output.

    Returns:
        {"logits", "loss", "grads"}: logits sum at most max(4 width, window) terms; the loss
        averages over every token of the batch; a weight's gradient sums over every token and
        passes the chain twice (forward and back).
    """
    longest = max(4 * width, window, vocab)
    tokens = train_batch * window
    n = reductions(depth)
    return {
        "logits": compilation.rounding_tolerance(longest, n, scales["logits"]),
        "loss": compilation.rounding_tolerance(max(longest, tokens), n + 1, scales["loss"]),
        "grads": compilation.rounding_tolerance(max(longest, tokens), 2 * n, scales["grads"]),
    }


def maybe_compile(fn: Callable, enabled: bool, mode: str) -> tuple[Callable | None, str]:
    """``compilation.try_compile`` when ``enabled``, else (None, ``SKIPPED``)."""
    return compilation.try_compile(fn, mode) if enabled else (None, SKIPPED)


def stage(
    name: str,
    fn: Callable | None,
    reason: str,
    *args: object,
    grad: bool = True,
    device: Any = None,
) -> tuple[object | None, dict]:
    """One compile stage: the first call of a compiled callable, timed, or why it did not run.

    Args:
        name: the stage, e.g. "forward at batch 32".
        fn: the compiled callable (None: not compiled, see ``reason``).
        reason: why ``fn`` is None ("" otherwise).
        *args: the call's arguments.
        grad: False runs it under ``torch.no_grad``.
        device: where it runs.

    Returns:
        (the call's result or None, {"stage", "seconds", "status"}); status "compiled", the
        reason it was not compiled, or "failed: <error>".
    """
    if fn is None:
        return None, {"stage": name, "seconds": math.nan, "status": reason or "not compiled"}
    out, seconds, error = compilation.first_call(fn, *args, grad=grad, device=device)
    status = f"failed: {error}" if error else "compiled"
    return out, {"stage": name, "seconds": seconds, "status": status}


def check_row(name: str, a: torch.Tensor | None, b: torch.Tensor, tolerance: float) -> dict:
    """One equality check: the largest |a - b| against a tolerance.

    Args:
        name: what is compared.
        a: the output under test (None: it did not run).
        b: the reference output.
        tolerance: the largest difference float32 rounding explains.

    Returns:
        {"check", "max_abs_diff", "tolerance", "equal"}; NaN and None when ``a`` is None.
    """
    if a is None:
        return {"check": name, "max_abs_diff": math.nan, "tolerance": tolerance, "equal": None}
    diff = float((a.detach().float() - b.detach().float()).abs().max())
    return {"check": name, "max_abs_diff": diff, "tolerance": tolerance, "equal": diff <= tolerance}


def speed_tables(times: Mapping[str, pd.DataFrame], seed: int = 0) -> pd.DataFrame:
    """``compilation.speed_table`` of every workload against eager SDPA, in one table.

    Args:
        times: workload -> ``compilation.interleaved_times`` (its calls include ``EAGER``).
        seed: the bootstrap seed.

    Returns:
        Index (workload, call): median_ms, p25_ms, p75_ms, samples, speedup, speedup_low,
        speedup_high (over eager SDPA).
    """
    tables = {w: compilation.speed_table(t, EAGER, seed) for w, t in times.items()}
    return pd.concat(tables, names=["workload", "call"])


def speed_figure(speeds: pd.DataFrame, stages: pd.DataFrame) -> plt.Figure:
    """Speed-ups over eager SDPA with their 95% intervals per workload, and the compile stages.

    Args:
        speeds: ``speed_tables``.
        stages: the compile stages (stage, seconds, status).

    Returns:
        The figure (two panels).
    """
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    names = list(dict.fromkeys(speeds.index.get_level_values("workload")))
    for j, call in enumerate((WRITTEN, COMPILED)):
        rows = speeds.xs(call, level="call") if call in speeds.index.get_level_values(1) else None
        if rows is None:
            continue
        rows = rows.reindex(names).dropna(subset=["speedup"])
        x = [names.index(w) + (j - 0.5) * 0.25 for w in rows.index]
        err = [rows.speedup - rows.speedup_low, rows.speedup_high - rows.speedup]
        ax.errorbar(x, rows.speedup, yerr=err, fmt="o", capsize=4, label=call)
    ax.axhline(1.0, c="black", lw=0.8)
    ax.axhline(MIN_TRAIN_SPEEDUP, c="grey", ls="--", lw=0.8, label="target (training step)")
    ax.set_xticks(range(len(names)), names, rotation=15)
    ax.set(ylabel="speed-up over eager SDPA", title="median ratio, 95% bootstrap interval")
    ax.legend(fontsize=8)
    done = stages.dropna(subset=["seconds"])
    bx.barh(done.stage, done.seconds, color="tab:purple")
    bx.invert_yaxis()
    bx.set(xlabel="seconds", title="first calls: torch.compile (fresh cache)")
    if done.empty:
        bx.text(0.5, 0.5, "nothing compiled", ha="center", va="center", transform=bx.transAxes)
    fig.tight_layout()
    return fig


def _speed(speeds: pd.DataFrame, name: str, call: str) -> pd.Series | None:
    key = (name, call)
    return speeds.loc[key] if key in speeds.index else None


def _stage_seconds(stages: pd.DataFrame, name: str) -> float:
    rows = stages[stages.stage == name]
    return float(rows.seconds.iloc[0]) if len(rows) else math.nan


def _compile_reason(stages: pd.DataFrame) -> str:
    """The first status that is not "compiled" ("" when every stage compiled)."""
    bad = [s for s in stages.status if s != "compiled"]
    return bad[0] if bad else ""


def targets(speeds: pd.DataFrame, stages: pd.DataFrame) -> list[dict]:
    """The issue's torch.compile target, against its measured value and interval.

    Args:
        speeds: ``speed_tables`` (its training workload is ``TRAIN``).
        stages: the compile stages (the training step's is ``TRAIN_STAGE``).

    Returns:
        One ``measure.targets.target`` dict; unavailable (NaN, not met) when the compiled step
        was not timed, with the reason in its note.
    """
    row = _speed(speeds, TRAIN, COMPILED)
    seconds = _stage_seconds(stages, TRAIN_STAGE)
    name = "compiled training step: speed-up over eager"
    if row is None:
        status = stages.loc[stages.stage == TRAIN_STAGE, "status"]
        why = status.iloc[0] if len(status) else _compile_reason(stages)
        return [target(name, math.nan, ">=", MIN_TRAIN_SPEEDUP, "x", f"unavailable: {why}")]
    return [target(name, row.speedup, ">=", MIN_TRAIN_SPEEDUP, "x",
                   f"first call {seconds:.1f} s (compile of forward + backward)",
                   interval=(row.speedup_low, row.speedup_high))]  # fmt: skip


def targets_view(targets_: Sequence[dict]) -> pd.DataFrame:
    """``targets_table`` with each target's note (the compile time, or why it is unavailable)."""
    view = targets_table(targets_)
    view["note"] = [t["note"] for t in targets_]
    return view


def _ratio_fact(name: str, row: pd.Series | None, against: str) -> tuple:
    if row is None:
        return (name, math.nan, "x", "not timed")
    return (name, row.speedup, "x",
            f"[{row.speedup_low:.3g}, {row.speedup_high:.3g}] over {against}")  # fmt: skip


def _inverse(row: pd.Series | None) -> pd.Series | None:
    """A written-out row's speed-up over SDPA turned into SDPA's over the written-out attention."""
    if row is None:
        return None
    return pd.Series({"speedup": 1 / row.speedup, "speedup_low": 1 / row.speedup_high,
                      "speedup_high": 1 / row.speedup_low})  # fmt: skip


def breakdown(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Where each variant's training step spends its time, side by side.

    Args:
        tables: variant -> ``compilation.op_time_shares`` of one of its steps.

    Returns:
        Index ``group``; for each variant ``<variant> ms`` and ``<variant> share``.
    """
    cols = {}
    for name, t in tables.items():
        cols[f"{name} ms"], cols[f"{name} share"] = t.ms, t.share
    return pd.DataFrame(cols).rename_axis("group")


def amdahl_bound(table: pd.DataFrame) -> float:
    """The largest speed-up a compile can give when only ``compilation.OTHER`` shrinks (to zero)
    and the matrix products and attention kernels stay as they are (Amdahl's law).

    Args:
        table: ``compilation.op_time_shares`` of the eager step.

    Returns:
        total / (total - other); inf when everything is "other".
    """
    total, other = table.ms.sum(), table.ms.get(compilation.OTHER, 0.0)
    return float(total / (total - other)) if total > other else math.inf


def repay_steps(compile_seconds: float, eager_ms: float, compiled_ms: float) -> float:
    """Training steps after which a compile has paid for itself.

    Args:
        compile_seconds: the first call's seconds (the compile).
        eager_ms: the eager step's median milliseconds.
        compiled_ms: the compiled step's.

    Returns:
        compile_seconds / (eager - compiled) per step, rounded up; inf when the compiled step is
        not faster; NaN when either is missing.
    """
    if any(map(math.isnan, (compile_seconds, eager_ms, compiled_ms))):
        return math.nan
    saved = (eager_ms - compiled_ms) / 1e3
    return float(math.ceil(compile_seconds / saved)) if saved > 0 else math.inf


def summary(
    backend: str,
    core: Mapping[str, float],
    checks: pd.DataFrame,
    speeds: pd.DataFrame,
    stages: pd.DataFrame,
    batch_sizes: Sequence[int],
    targets_: Sequence[dict],
    times: pd.DataFrame,
) -> pd.DataFrame:
    """This run's facts for the Discussion (every row present, NaN where nothing was measured).

    Args:
        backend: ``sdpa_backend``.
        core: the technique-core record (max_abs_diff, tolerance).
        checks: the equality checks (check, max_abs_diff, tolerance, equal).
        speeds: ``speed_tables``.
        stages: the compile stages (stage, seconds, status).
        batch_sizes: the inference batch sizes.
        targets_: the targets.
        times: ``breakdown`` of the training step (``EAGER`` columns, ``COMPILED`` ones if it
            was compiled).

    Returns:
        A ``fact_table``.
    """
    ran = checks.dropna(subset=["max_abs_diff"])
    rows = [
        ("attention: SDPA kernel", backend, "", "torch's choice for these inputs"),
        ("attention: by hand vs SDPA, difference over tolerance",
         core["max_abs_diff"] / core["tolerance"], "",
         f"largest |difference| {core['max_abs_diff']:.3g}, float32 bound {core['tolerance']:.3g}"),
        ("equal outputs: checks within tolerance", int(ran.equal.astype(bool).sum()), "",
         f"of {len(ran)} run ({len(checks) - len(ran)} not run)"),
    ]  # fmt: skip
    for b in batch_sizes:
        rows.append(
            _ratio_fact(
                f"SDPA: speed-up over written out, batch {b}",
                _inverse(_speed(speeds, workload(b), WRITTEN)),
                "written out",
            )
        )
    rows.append(
        _ratio_fact(
            "SDPA: training step speed-up over written out",
            _inverse(_speed(speeds, TRAIN, WRITTEN)),
            "written out",
        )
    )
    rows.append(
        (
            "compile: status",
            _compile_reason(stages) or "compiled",
            "",
            "the first stage that failed" if _compile_reason(stages) else "every stage",
        )
    )
    for s in stages.itertuples():
        rows.append((f"compile: {s.stage}, first call", s.seconds, "s", s.status))
    for b in batch_sizes:
        rows.append(
            _ratio_fact(
                f"compiled: speed-up at batch {b}", _speed(speeds, workload(b), COMPILED), "eager"
            )
        )
    rows.append(
        _ratio_fact("compiled: training step speed-up", _speed(speeds, TRAIN, COMPILED), "eager")
    )
    eager, comp = _speed(speeds, TRAIN, EAGER), _speed(speeds, TRAIN, COMPILED)
    eager_ms = eager.median_ms if eager is not None else math.nan
    comp_ms = comp.median_ms if comp is not None else math.nan
    other = times.loc[compilation.OTHER]
    other_ratio = (
        other[f"{COMPILED} ms"] / other[f"{EAGER} ms"] if f"{COMPILED} ms" in other else math.nan
    )
    rows += [
        ("eager: training step", eager_ms, "ms", "median, SDPA"),
        ("compiled: training steps to repay the compile",
         repay_steps(_stage_seconds(stages, TRAIN_STAGE), eager_ms, comp_ms), "steps",
         "first call / time saved per step; inf: never"),
        ("eager: training step share in matrix products and attention",
         1 - times.loc[compilation.OTHER, f"{EAGER} share"], "",
         "self CPU time of the operators (torch.profiler)"),
        ("compile: speed-up bound if only the other operators shrink",
         amdahl_bound(times[[f"{EAGER} ms"]].set_axis(["ms"], axis=1)), "x",
         "Amdahl's law: the other operators' time taken to zero"),
        ("compiled: other operators' time over eager's", other_ratio, "",
         "the training step, profiled once each"),
        ("targets met", sum(bool(t["met"]) for t in targets_), "", f"of {len(targets_)}"),
    ]  # fmt: skip
    return fact_table(rows, digits=4)
