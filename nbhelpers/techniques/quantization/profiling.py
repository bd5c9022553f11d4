"""Where an ONNX Runtime model spends its time: per-operator profiles, grouped by what the
operators do."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import torch

from nbhelpers.core.params import check_choice
from nbhelpers.techniques.quantization.onnx import ORT_LEVELS


def ort_profile(
    path: str | Path,
    x: torch.Tensor,
    runs: int = 20,
    threads: int = 1,
    prefix: str | Path | None = None,
    level: str = "all",
) -> pd.DataFrame:
    """Time spent per operator in an ONNX Runtime model, from its built-in profiler.

    Args:
        path: the .onnx model.
        x: the input batch.
        runs: how many calls to profile (after one warm-up call, which the profiler records and
            this table leaves out: its first-call allocations would inflate some kernels several
            times over).
        threads: intra-op threads.
        prefix: where the profiler writes its JSON (default: beside the model); the file is removed.
        level: graph optimization level, a key of ``onnx.ORT_LEVELS`` (that of the timed session).

    Returns:
        One row per node, slowest first: node, op, input_type (element type of its first
        input, e.g. "uint8"), order (position in execution order), ms_per_run, share (of the
        summed kernel time).
    """
    import json

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    check_choice("ORT_LEVEL", level, ORT_LEVELS)
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_LEVELS[level])
    opts.enable_profiling = True
    opts.profile_file_prefix = str(prefix or Path(path).with_suffix(""))
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.detach().cpu().numpy()}
    sess.run(None, feed)
    for _ in range(runs):
        sess.run(None, feed)
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink(missing_ok=True)
    return kernel_table(events, runs)


def kernel_table(events: list[dict], runs: int) -> pd.DataFrame:
    """Per-node kernel time of an ONNX Runtime profile trace, its first (warm-up) call left out.

    Args:
        events: the profiler's JSON events (``cat`` "Node", names ending in ``_kernel_time``).
        runs: the calls after the warm-up that the trace holds.

    Returns:
        The table ``ort_profile`` returns.
    """
    rows: dict[tuple[str, str], dict] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            args = e.get("args", {})
            key = (e["name"][: -len("_kernel_time")], args.get("op_name", ""))
            first = (args.get("input_type_shape") or [{}])[0]
            row = rows.setdefault(
                key, {"order": len(rows), "input_type": next(iter(first), ""), "ms": 0.0, "n": 0}
            )
            row["n"] += 1
            if row["n"] > 1:  # the first call is the warm-up: its allocations are not the kernel's
                row["ms"] += e["dur"] / 1e3 / runs
    df = pd.DataFrame(
        [
            {
                "node": n,
                "op": op,
                "input_type": r["input_type"],
                "order": r["order"],
                "ms_per_run": r["ms"],
            }
            for (n, op), r in rows.items()
        ]
    )
    df["share"] = df["ms_per_run"] / df["ms_per_run"].sum()
    return df.sort_values("ms_per_run", ascending=False).reset_index(drop=True)


#: Operator types of ONNX Runtime's CPU kernels, by what they do (``profile_by_op``).
OP_GROUPS = {
    "convolution": ("Conv", "ConvInteger", "QLinearConv", "FusedConv", "NhwcFusedConv"),
    "matrix product": (
        "Gemm",
        "FusedGemm",
        "QGemm",
        "MatMul",
        "FusedMatMul",
        "MatMulInteger",
        "QLinearMatMul",
        "DynamicQuantizeMatMul",
    ),
    "quantize / dequantize": ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"),
    "layout": ("Transpose", "ReorderInput", "ReorderOutput", "Flatten", "Reshape"),
    "pooling": ("MaxPool", "NhwcMaxPool", "AveragePool", "QLinearAveragePool"),
    "casts and element-wise": ("Cast", "Mul", "Add", "Relu", "Clip", "QLinearAdd", "QLinearMul"),
}


def op_group(op: str) -> str:
    """The ``OP_GROUPS`` name of an ONNX Runtime operator type ("other" when it is in none)."""
    return next((g for g, ops in OP_GROUPS.items() if op in ops), "other")


def profile_by_op(profiles: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Share of each model's profiled time per operator type, every operator kept.

    Args:
        profiles: model name -> ``ort_profile`` of one model.

    Returns:
        Index (group, operator), the operator written with the element type of its first input
        (e.g. "MaxPool (uint8)"); one column per model: its share of that model's summed kernel
        time (0 where the model has no such operator); rows in ``OP_GROUPS`` order.
    """
    parts = []
    for name, p in profiles.items():
        op = p["op"] + " (" + p["input_type"].astype(str) + ")"
        g = p.assign(group=p["op"].map(op_group), operator=op)
        parts.append(g.groupby(["group", "operator"])["share"].sum().rename(name))
    table = pd.concat(parts, axis=1).fillna(0.0)
    order = {g: i for i, g in enumerate([*OP_GROUPS, "other"])}
    return table.sort_index(key=lambda ix: ix.map(order) if ix.name == "group" else ix)
