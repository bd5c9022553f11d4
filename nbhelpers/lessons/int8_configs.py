"""Notebook 06, section 3.10: ONNX Runtime's documented int8 configurations side by side, the
fastest correct one per model, and its targets on the CPU that ran them."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from nbhelpers.measure.facts import fact_table
from nbhelpers.measure.targets import points_lost, target

#: The columns of a ``measure.compare`` table that the configuration tables show.
SHOWN = ("accuracy", "accuracy_delta_points", "delta_low_points", "delta_high_points", "bytes",
         "size_ratio")  # fmt: skip

#: The speed each model's best int8 configuration should reach over its fp32 model (issue targets):
#: LeNet-5 1.5x on CPUs with VNNI or AMX and 1.0x without; LeNet-5-Caffe 2x on CPUs with VNNI.
SPEED_TARGETS = {"lenet5": (1.5, 1.0), "lenet5_caffe": (2.0, None)}


def config_view(table: pd.DataFrame, batch_sizes: list[int]) -> pd.DataFrame:
    """The configuration table as the lesson shows it: accuracy change, size and speed-ups.

    Args:
        table: ``measure.compare`` of the configurations (baseline "fp32").
        batch_sizes: the timed batch sizes.

    Returns:
        The shown columns, then speedup_b<bs> and latency_ms_b<bs> per batch size.
    """
    cols = [*SHOWN]
    for bs in batch_sizes:
        cols += [f"latency_ms_b{bs}", f"speedup_b{bs}"]
    return table[cols]


def config_targets(
    tables: Mapping[str, pd.DataFrame],
    best: Mapping[str, str | None],
    cpu: Mapping,
    batch: int,
    max_drop_points: float = 0.5,
) -> list[dict]:
    """Speed and accuracy targets of each model's fastest correct configuration.

    Args:
        tables: arch -> ``measure.compare`` of its configurations.
        best: arch -> ``fastest_correct`` (None: no configuration within the accuracy drop).
        cpu: ``machine.describe`` of this run's CPU (vnni, amx).
        batch: the batch size of the speed targets.
        max_drop_points: the accuracy drop the choice allowed.

    Returns:
        ``targets.target`` dicts: per arch, the speed-up of its best configuration over its fp32
        model and that configuration's accuracy drop with its paired interval (the configuration
        named in the note). A model with no correct configuration gets a speed-up row without a
        value, which misses, its note naming the fastest configuration.
    """
    fast_cpu = bool(cpu.get("vnni")) or bool(cpu.get("amx"))
    rows = []
    for arch, table in tables.items():
        with_fast, without = SPEED_TARGETS.get(arch, (1.0, 1.0))
        need = with_fast if fast_cpu else without
        cpu_note = f"CPU {'with' if fast_cpu else 'without'} VNNI/AMX"
        if need is None:
            need, cpu_note = with_fast, cpu_note + " (the target is set for VNNI CPUs)"
        col = f"speedup_b{batch}"
        name = best.get(arch)
        if name is None:
            fastest = str(table.drop(index="fp32")[col].idxmax())
            rows.append(target(f"speedup ({arch}: no ORT int8 config within {max_drop_points} "
                               "points)", float("nan"), ">=", need, "x",
                               f"batch {batch}, {cpu_note}; fastest: {fastest}"))  # fmt: skip
            continue
        speedup = float(table.loc[name, col])
        rows.append(target(f"speedup ({arch}: best ORT int8 config)", speedup, ">=", need, "x",
                           f"batch {batch}, {cpu_note}; best: {name}"))  # fmt: skip
        drop, ci = points_lost(table.loc[name])
        rows.append(target(f"accuracy drop ({arch}: best ORT int8 config)", drop, "<=",
                           max_drop_points, "points", f"best: {name}", interval=ci))  # fmt: skip
    return rows


def config_facts(tables: Mapping[str, pd.DataFrame], batch: int) -> pd.DataFrame:
    """What the configuration tables show, one row per model: reference, fastest and slowest.

    Args:
        tables: arch -> ``measure.compare`` of its configurations (first int8 row: the reference).
        batch: the batch size read.

    Returns:
        A ``facts.fact_table`` (index fact; value, unit, context), to join the lesson's facts.
    """
    col, rows = f"speedup_b{batch}", []
    for arch, t in tables.items():
        int8 = t.drop(index="fp32")[col]
        ref = int8.index[0]
        rows += [
            (f"{arch} ORT int8 reference: speed-up over fp32", round(float(int8[ref]), 2), "x",
             f"timed at batch {batch}, {ref}"),
            (f"{arch} ORT int8 fastest configuration", str(int8.idxmax()), "",
             f"timed: {int8.max():.2f}x at batch {batch}"),
            (f"{arch} ORT int8 slowest configuration", str(int8.idxmin()), "",
             f"timed: {int8.min():.2f}x at batch {batch}"),
            (f"{arch} ORT int8: configurations faster than fp32", int((int8 > 1).sum()), "",
             f"of {len(int8)}, timed at batch {batch}"),
        ]  # fmt: skip
    return fact_table(rows)
