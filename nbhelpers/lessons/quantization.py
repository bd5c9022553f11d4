"""Notebook 06's lesson code: its targets (accuracy, size, speed of every int8 model; 4-bit
per-channel weights) and the facts table with its wording (the CPU, the bit-width sweep, bytes
and speed in each runtime, the width scan, the operator profiles, the calibration mistakes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd

from nbhelpers.techniques.quantization import (
    OP_GROUPS,
    op_group,
    per_channel_never_worse,
    sqnr_bits_span,
    sqnr_gain_per_bit,
    sqnr_grows_with_bits,
)

#: Unit and comparison of each kind of target (the first word of its name).
TARGET_KINDS = {
    "accuracy": ("<=", "points"),
    "size": (">=", "x"),
    "speedup": (">=", "x"),
    "4-bit": ("<=", "points"),
}


def check_width_scan(value: object) -> list:
    """Check ``WIDTH_SCAN``: a list (possibly empty) of [conv1, conv2] channel pairs, each >= 1.

    Args:
        value: the given list.

    Returns:
        The list.
    """
    from nbhelpers.core.params import ParameterError, check_int, check_list

    pairs = check_list("WIDTH_SCAN", value,
                       lambda n, v: check_list(n, v, lambda m, c: check_int(m, c, minimum=1), 2),
                       0)  # fmt: skip
    if any(len(c) != 2 for c in pairs):
        raise ParameterError("WIDTH_SCAN", value, "a list of [conv1, conv2] channel pairs")
    return pairs


def int8_targets(
    same_runtime: pd.DataFrame, table: pd.DataFrame, four_bit: pd.DataFrame, batch: int
) -> tuple[list[dict], list[dict]]:
    """The lesson's targets for every int8 model, and for the 4-bit per-channel weights.

    Args:
        same_runtime: ``same_runtime_speedups`` (index: int8 model; size_ratio, speedup_b<batch>).
        table: the ``measure.compare`` rows of every model (accuracy change against its family's
            fp32 model, with the paired interval).
        four_bit: rows of the from-scratch sweep at 4 bits, per-channel (model, variant, accuracy
            change with its paired interval).
        batch: the batch size of the speed target.

    Returns:
        (targets, speed targets) as ``targets.target`` dicts: accuracy drop <= 0.5 points and
        size ratio >= 3.9x per int8 model, then 4-bit drop <= 2 points per model and variant;
        speedup >= 2x per int8 model apart, because timings vary between runs.
    """
    from nbhelpers.measure.targets import points_lost, target

    kept, speed = [], []
    for name, r in same_runtime.iterrows():
        drop, ci = points_lost(table.loc[name])
        kept += [
            target(f"accuracy drop ({name})", drop, "<=", 0.5, "points", interval=ci),
            target(f"size ratio ({name})", r["size_ratio"], ">=", 3.9, "x"),
        ]
        speed.append(
            target(f"speedup ({name})", r[f"speedup_b{batch}"], ">=", 2.0, "x", f"batch {batch}")
        )
    for _, r in four_bit.iterrows():
        drop, ci = points_lost(r)
        kept.append(
            target(
                f"4-bit per-channel drop ({r['model']} {r['variant']})",
                drop,
                "<=",
                2.0,
                "points",
                interval=ci,
            )
        )
    return kept, speed


def targets_met(targets: Sequence[dict], kind: str) -> bool | None:
    """Whether every target of one kind is met.

    Args:
        targets: ``targets.target`` dicts.
        kind: the first word of their names ("accuracy", "size", "speedup", "4-bit").

    Returns:
        True or False; None when no target is of that kind.
    """
    hit = [t["met"] for t in targets if t["name"].split()[0] == kind]
    return bool(all(hit)) if hit else None


def _cpu_facts(cpu: dict) -> list[tuple]:
    """Facts about the CPU the int8 kernels ran on (``machine.describe``)."""
    return [
        ("CPU", str(cpu["cpu"]), "", "model name"),
        ("CPU has VNNI", bool(cpu["vnni"]), "", "avx512_vnni or avx_vnni (VPDPBUSD)"),
        ("CPU has AMX int8", bool(cpu.get("amx", False)), "", "amx_int8 (tile matrix multiply)"),
        (
            "ONNX Runtime reduce_range chosen",
            bool(cpu["int8_reduce_range"]),
            "",
            str(cpu.get("int8_reason", "")),
        ),
    ]


def _bits_facts(sweep: pd.DataFrame, naive: pd.DataFrame) -> list[tuple]:
    """Facts of the from-scratch sweep and of the naive rescale against int8."""
    hi, lo = int(sweep.bits.max()), int(sweep.bits.min())
    at_hi = sweep[sweep.bits == hi]
    at_lo = sweep[sweep.bits == lo].set_index(["model", "variant"]).accuracy
    span = sqnr_bits_span(sorted(set(sweep.bits)))
    within = (at_hi.delta_low_points <= 0) & (at_hi.delta_high_points >= 0)
    int8_rows = naive[naive.index.str.startswith("int8")]
    return [
        (
            "SQNR gain per bit",
            round(sqnr_gain_per_bit(sweep), 2),
            "dB",
            f"{span[0]} to {span[1]} bits, mean over models and variants; theory 6.02",
        ),
        ("SQNR grows with every bit", sqnr_grows_with_bits(sweep), "", "every model and variant"),
        (
            "most bits: largest accuracy change",
            round(float(at_hi.accuracy_delta_points.abs().max()), 2),
            "points",
            f"{hi} bits, weights only, any model and variant",
        ),
        (
            "most bits: every variant within noise",
            bool(within.all()),
            "",
            f"{hi} bits: every paired 95% interval contains zero",
        ),
        (
            "fewest bits: lowest accuracy",
            round(float(at_lo.min()), 4),
            "accuracy",
            f"{lo} bits, {', '.join(at_lo.idxmin())}",
        ),
        (
            "fewest bits: highest accuracy",
            round(float(at_lo.max()), 4),
            "accuracy",
            f"{lo} bits, {', '.join(at_lo.idxmax())}",
        ),
        (
            "per-channel SQNR never below per-tensor",
            per_channel_never_worse(sweep),
            "",
            "every model, bit width and scheme",
        ),
        (
            "naive rescale: distinct values",
            int(naive["distinct values"].iloc[1]),
            "values",
            str(naive.index[1]),
        ),
        (
            "int8: distinct values",
            int(int8_rows["distinct values"].iloc[0]),
            "values",
            f"{int8_rows.index[0]}; at most 2^8 = 256",
        ),
    ]


def _batch_columns(frame: pd.DataFrame, prefix: str) -> list[tuple[str, int]]:
    """(label, batch size) of the smallest and the largest batch among columns ``<prefix><bs>``."""
    sizes = sorted(int(c[len(prefix) :]) for c in frame.columns if c.startswith(prefix))
    return [("smallest batch", sizes[0]), ("largest batch", sizes[-1])]


def _size_speed_facts(same_runtime: pd.DataFrame, table: pd.DataFrame) -> list[tuple]:
    """Facts on each int8 model's bytes and speed against the fp32 model of its runtime."""
    rows = []
    for name, r in same_runtime.iterrows():
        rows.append(
            (
                f"{name}: times smaller",
                round(float(r["size_ratio"]), 2),
                "x",
                f"than {r['fp32 reference']}; 8 of 32 bits per weight",
            )
        )
        p = table.loc[name, "params"]
        if pd.notna(p):
            extra = int(table.loc[name, "bytes"] - p)
            rows.append(
                (
                    f"{name}: bytes beyond one per parameter",
                    extra,
                    "bytes",
                    f"of {int(table.loc[name, 'bytes']):,}; {int(p):,} parameters",
                )
            )
    for label, bs in _batch_columns(same_runtime, "speedup_b"):
        for name, r in same_runtime.iterrows():
            v = float(r[f"speedup_b{bs}"])
            rows.append(
                (
                    f"{name}: faster than fp32, {label}",
                    bool(v > 1),
                    "",
                    f"{v:.2f}x = fp32 / int8 latency, batch {bs}, same runtime",
                )
            )
    return rows


def _runtime_facts(table: pd.DataFrame) -> list[tuple]:
    """Facts across runtimes: ONNX Runtime fp32 vs eager torch (smallest batch), fastest model."""
    rows = []
    families = list(dict.fromkeys(n.split()[0] for n in table.index))
    for label, bs in _batch_columns(table, "latency_ms_b"):
        col = f"latency_ms_b{bs}"
        for f in families:
            if f"{f} fp32 ort" in table.index and label == "smallest batch":
                ratio = float(table.loc[f"{f} fp32", col] / table.loc[f"{f} fp32 ort", col])
                rows.append(
                    (
                        f"{f}: ONNX Runtime fp32 speed vs eager torch, {label}",
                        round(ratio, 2),
                        "x",
                        f"batch {bs}; above 1: ONNX Runtime faster",
                    )
                )
            lat = table.loc[[n for n in table.index if n.split()[0] == f], col]
            rows.append(
                (
                    f"{f}: fastest model, {label}",
                    str(lat.idxmin()),
                    "",
                    f"{lat.min():.3g} ms at batch {bs}",
                )
            )
    return rows


def _scan_facts(width_scan: pd.DataFrame) -> list[tuple]:
    """Facts of the ONNX Runtime width scan at its largest batch."""
    if not len(width_scan):
        return [("width scan", "skipped", "", "WIDTH_SCAN is empty")]
    bs = int(width_scan.batch_size.max())
    big = width_scan[width_scan.batch_size == bs].reset_index(drop=True)
    a, b = big.iloc[0], big.iloc[-1]
    widths = f"channels ({a['channels']}) -> ({b['channels']}), batch {bs}"
    return [
        (
            "width scan: int8 speedup, narrowest",
            round(float(a["int8_speedup"]), 2),
            "x",
            f"channels {a['channels']}",
        ),
        (
            "width scan: int8 speedup, widest",
            round(float(b["int8_speedup"]), 2),
            "x",
            f"channels {b['channels']}",
        ),
        ("width scan: int8 faster at the widest", bool(b["int8_speedup"] > 1), "", f"batch {bs}"),
        ("width scan: fp32 time growth", round(float(b["fp32_ms"] / a["fp32_ms"]), 2), "x", widths),
        ("width scan: int8 time growth", round(float(b["int8_ms"] / a["int8_ms"]), 2), "x", widths),
    ]


def _group_ms(profile: pd.DataFrame, group: str) -> float:
    """Milliseconds per call a profile spends in one ``OP_GROUPS`` group."""
    return float(profile.loc[profile["op"].map(op_group) == group, "ms_per_run"].sum())


def _profile_facts(profiles: Mapping[str, pd.DataFrame], fp32: str) -> list[tuple]:
    """Facts of ONNX Runtime's per-operator profiles: each int8 model against the fp32 one.

    Args:
        profiles: model name -> ``ort_profile`` (with its order and input_type columns).
        fp32: the name of the float model's profile.

    Returns:
        Per int8 model: its time over fp32's, the shares of its first convolution, of all its
        convolutions, of quantize/dequantize, layout and pooling operators, its convolution time
        over fp32's, and its slowest operator.
    """
    ref = profiles[fp32]
    total32, conv32 = float(ref.ms_per_run.sum()), _group_ms(ref, "convolution")
    rows: list[tuple] = [
        ("fp32 profile: time per call", round(total32, 3), "ms", f"{fp32}, summed kernel time"),
        ("fp32 profile: layout share", round(_group_ms(ref, "layout") / total32, 3), "", fp32),
    ]
    for name, p in profiles.items():
        if name == fp32:
            continue
        total = float(p.ms_per_run.sum())
        convs = p[p["op"].map(op_group) == "convolution"].sort_values("order")
        first, top = convs.iloc[0], p.iloc[0]
        share = {g: _group_ms(p, g) / total for g in OP_GROUPS}
        pool = p[p["op"].map(op_group) == "pooling"].head(1)
        pool_ctx = ", ".join(f"largest: {r.op} on {r.input_type}" for r in pool.itertuples())
        conv8 = _group_ms(p, "convolution")
        rows += [
            (f"{name} profile: time over fp32", round(total / total32, 2), "x", f"{total:.3g} ms"),
            (
                f"{name} profile: first convolution share",
                round(float(first["share"]), 3),
                "",
                f"{first['op']} on {first['input_type']}, node {first['node']}",
            ),
            (f"{name} profile: convolution share", round(share["convolution"], 3), "", ""),
            (
                f"{name} profile: most time in convolutions",
                bool(share["convolution"] > 0.5),
                "",
                "convolution share above one half",
            ),
            (
                f"{name} profile: quantize/dequantize share",
                round(share["quantize / dequantize"], 3),
                "",
                ", ".join(OP_GROUPS["quantize / dequantize"]),
            ),
            (
                f"{name} profile: layout share",
                round(share["layout"], 3),
                "",
                ", ".join(OP_GROUPS["layout"]),
            ),
            (f"{name} profile: pooling share", round(share["pooling"], 3), "", pool_ctx),
            (
                f"{name} profile: convolutions over fp32's",
                round(conv8 / conv32, 2),
                "x",
                f"{conv8:.3g} ms against {conv32:.3g} ms per call, every convolution",
            ),
            (
                f"{name} profile: slowest operator",
                f"{top['op']} on {top['input_type']}",
                "",
                f"node {top['node']}: {top['ms_per_run']:.3g} of {total:.3g} ms per call",
            ),
        ]
    return rows


def _mistake_facts(accuracy: pd.DataFrame, ranges: pd.DataFrame) -> list[tuple]:
    """Facts of ``calibration_mistakes`` tables of several models (each with a model column).

    Args:
        accuracy: the accuracy tables, concatenated, with a ``model`` column.
        ranges: the ranges tables, concatenated, with a ``model`` column.

    Returns:
        Per model and quantizer: the calibrated model against fp32, every mistake against the
        calibrated model (points and verdict, paired 95% interval); per model and eager setting,
        the step of the input grid and the smallest ratio of a layer's range width to the
        calibrated one (below 1: that layer's range is narrower).
    """
    rows = []
    for r in accuracy.itertuples():
        right = r.setting.startswith("calibrated")
        ref = "fp32" if right else "calibrated"
        name = f"{r.model} {r.quantizer}, {'calibrated' if right else r.setting}"
        lo, hi = getattr(r, f"vs_{ref}_low"), getattr(r, f"vs_{ref}_high")
        ctx = f"[{lo:+.2f}, {hi:+.2f}] points, paired 95%; {r.calibration_images} images"
        rows += [
            (f"{name}: change vs {ref}", round(getattr(r, f"vs_{ref}_points"), 2), "points", ctx),
            (f"{name}: verdict vs {ref}", getattr(r, f"vs_{ref}_verdict"), "", ctx),
        ]
    width = ranges.assign(width=ranges.range_high - ranges.range_low)
    for model, g in width.groupby("model", sort=False):
        right = g[g.setting.str.startswith("calibrated")].set_index("layer").width
        for setting, s in g.groupby("setting", sort=False):
            s = s.set_index("layer")
            label = "calibrated" if setting.startswith("calibrated") else setting
            rows.append(
                (
                    f"{model} torch int8, {label}: input grid step",
                    round(float(s.loc["quant", "scale"]), 4),
                    "",
                    "scale of the quantized input image (pixels in [0, 1])",
                )
            )
            if not setting.startswith("calibrated"):
                ratio = s.width / right
                rows.append(
                    (
                        f"{model} torch int8, {setting}: range width vs calibrated, smallest",
                        round(float(ratio.min()), 2),
                        "x",
                        f"layer {ratio.idxmin()}; widest: {ratio.max():.3g}x, {ratio.idxmax()}",
                    )
                )
    return rows


def summary(
    sweep: pd.DataFrame,
    naive: pd.DataFrame,
    table: pd.DataFrame,
    same_runtime: pd.DataFrame,
    width_scan: pd.DataFrame,
    profiles: Mapping[str, pd.DataFrame],
    cpu: dict,
    *,
    n_test: int,
    fp32_profile: str = "lenet5 fp32 ort",
    mistakes: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    qat: str = "lenet5 int8 qat",
    static: str = "lenet5 int8 static",
) -> pd.DataFrame:
    """This run's facts about quantization, from the notebook's tables.

    Args:
        sweep: the from-scratch sweep (model, bits, variant, sqnr_db, accuracy, accuracy change with
            its paired interval).
        naive: the naive-rescale table (index: method; "distinct values"); row 1 is the naive
            rescale, the first row whose name starts with "int8" the int8 codes.
        table: every model's ``measure.compare`` row (index: model name).
        same_runtime: ``same_runtime_speedups`` of the int8 models.
        width_scan: the width scan (channels, batch_size, fp32_ms, int8_ms, int8_speedup); may be
            empty.
        profiles: model name -> ``ort_profile`` of the same architecture, fp32 and int8.
        cpu: ``machine.describe()`` of this run.
        n_test: number of test images.
        fp32_profile: the name of the float model in ``profiles``.
        mistakes: (accuracy, ranges) of ``calibration_mistakes``, each model's tables
            concatenated with a ``model`` column (None leaves their facts out).
        qat: the QAT model's row in ``table``; it runs the same int8 kernels as ``static``, so
            its bytes and speed are left out.
        static: the static post-training model it is compared with.

    Returns:
        A ``baseline.fact_table``: index ``fact``, columns value, unit, context.
    """
    from nbhelpers.measure.facts import fact_table

    drops = same_runtime.accuracy_delta_points
    ref = str(table.index[0])
    acc = float(table.loc[ref, "accuracy"])
    kernels = same_runtime.drop(index=qat, errors="ignore")  # QAT runs the static model's kernels
    rows = (
        _cpu_facts(cpu)
        + _bits_facts(sweep, naive)
        + _size_speed_facts(kernels, table)
        + _runtime_facts(table)
        + _scan_facts(width_scan)
        + _profile_facts(profiles, fp32_profile)
        + (_mistake_facts(*mistakes) if mistakes is not None else [])
    )
    rows += [
        (
            "largest int8 accuracy drop",
            round(-float(drops.min()), 2) + 0.0,
            "points",
            f"{drops.idxmin()}, against the fp32 model of its runtime",
        ),
        (
            "QAT minus static PTQ",
            round(100 * float(table.loc[qat, "accuracy"] - table.loc[static, "accuracy"]), 2),
            "points",
            f"test accuracy, {qat} vs {static}",
        ),
        ("one test image", round(100 / n_test, 4), "points", f"{n_test:,} test images"),
        (
            f"standard error of {ref}'s accuracy",
            round(100 * math.sqrt(acc * (1 - acc) / n_test), 2),
            "points",
            f"sqrt(p (1 - p) / n) at p = {acc:.4f}",
        ),
    ]
    return fact_table(rows)
