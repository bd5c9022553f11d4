"""Where the bytes of an ONNX file go: weights, bias, scales and zero points, other tensors, and the
graph and its protobuf container, adding up exactly to the file; and the fp32 / int8 size ratio
against a target, for the file as written and for its lean rewrite (``onnx_lean``).

The accounting rule: an initializer part counts the tensor's data payload only, the bytes of the
field that holds its values (``raw_data``, or the packed ``float_data``/``int32_data``/... content,
whose varints make an int8 zero point stored in ``int32_data`` 1 byte if 0 and 10 if negative),
without that field's tag and length. Everything else, the tensors' names, dims, types and framing,
the nodes, inputs, outputs, value infos, opsets, producer and metadata, is "graph and container".
Tensors held by ``Constant`` nodes count like initializers (their payload in the tensor's part, the
rest of the node in the graph). Roles come from tracing the graph, not from names: an initializer
is a weight if it reaches a weight slot (Conv's W, Gemm's B, QLinearConv's w, MatMulInteger's B,
...) directly or through DequantizeLinear/Reshape/Transpose/Cast; a bias if it reaches a bias slot
or is added to a weighted node's output (through the Cast and Mul of dynamic quantization); a scale
or zero point if it reaches a quantization parameter slot or multiplies a scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from nbhelpers.core.params import ParameterError, check_float
from nbhelpers.techniques.quantization.onnx_lean import constant_tensors, lean_onnx, load_onnx

#: Op type: (weight slots, bias slots, quantization-parameter slots) of its inputs. A weight slot
#: counts only when its value comes from a constant (MatMul's activation input does not).
SLOTS: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    "Conv": ((1,), (2,), ()),
    "ConvTranspose": ((1,), (2,), ()),
    "FusedConv": ((1,), (2,), ()),
    "Gemm": ((0, 1), (2,), ()),
    "FusedGemm": ((0, 1), (2,), ()),
    "MatMul": ((0, 1), (), ()),
    "FusedMatMul": ((0, 1), (), ()),
    "QLinearConv": ((3,), (8,), (1, 2, 4, 5, 6, 7)),
    "QLinearMatMul": ((0, 3), (), (1, 2, 4, 5, 6, 7)),
    "QGemm": ((0, 3), (6,), (1, 2, 4, 5, 7, 8)),
    "ConvInteger": ((1,), (), (2, 3)),
    "MatMulInteger": ((0, 1), (), (2, 3)),
    "DynamicQuantizeMatMul": ((1,), (4,), (2, 3)),
    "MatMulIntegerToFloat": ((0, 1), (6,), (2, 3, 4, 5)),
    "QuantizeLinear": ((), (), (1, 2)),
    "DequantizeLinear": ((), (), (1, 2)),
    "QLinearAdd": ((), (), (1, 2, 4, 5, 6, 7)),
    "QLinearMul": ((), (), (1, 2, 4, 5, 6, 7)),
    "QLinearAveragePool": ((), (), (1, 2, 3, 4)),
    "QLinearGlobalAveragePool": ((), (), (1, 2, 3, 4)),
    "QLinearLeakyRelu": ((), (), (1, 2, 3, 4)),
    "QLinearSigmoid": ((), (), (1, 2, 3, 4)),
}
#: Ops a constant passes through on its way to a slot (their input 0 is the data).
PASS_THROUGH = (
    "DequantizeLinear",
    "Reshape",
    "Transpose",
    "Cast",
    "Unsqueeze",
    "Squeeze",
    "Identity",
)
#: The parts of a breakdown, in table order; the last is split by ``detail=True``.
PARTS = ("weights", "bias", "scales and zero points", "other initializers", "graph and container")
#: The rows "graph and container" splits into with ``detail=True``.
CONTAINER_PARTS = (
    "tensor names, dims and framing",
    "nodes",
    "inputs, outputs and value info",
    "header (opsets, producer, metadata)",
)
_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data")
_GRAPH_LISTS = ("node", "initializer", "input", "output", "value_info")
_RANK = {"weights": 0, "bias": 1, "scales and zero points": 2, "other initializers": 3}


def _vlen(n: int) -> int:
    """Bytes of ``n`` as a protobuf varint."""
    return max(1, (n.bit_length() + 6) // 7)


def _entry(n: int) -> int:
    """Bytes of a length-delimited field of ``n`` bytes whose field number is below 16."""
    return 1 + _vlen(n) + n


def tensor_payload(t) -> int:
    """Bytes of a TensorProto's values as stored (``raw_data`` or packed typed field content).

    Args:
        t: the ``onnx.TensorProto``.

    Returns:
        The payload bytes, without the fields' tags and lengths (0 for external data).
    """
    import onnx

    total = sum(len(s) for s in t.string_data)
    for field in _DATA_FIELDS:
        only = onnx.TensorProto()
        if field == "raw_data":
            only.raw_data = t.raw_data
        else:
            getattr(only, field).extend(getattr(t, field))
        size = only.ByteSize()
        if size:
            k = 1
            while _vlen(size - 1 - k) != k:  # size = tag (1) + varint length (k) + content
                k += 1
            total += size - 1 - k
    return total


def tensor_roles(graph) -> dict[str, str]:
    """The part of a breakdown each constant of a graph belongs to, traced through the nodes.

    Args:
        graph: the ``onnx.GraphProto`` (nodes in topological order, as ONNX requires).

    Returns:
        {initializer or Constant output name: "weights", "bias", "scales and zero points" or
        "other initializers"}.
    """
    consts = {t.name for t in graph.initializer} | {n for _, n in constant_tensors(graph)}
    producer = {out: node for node in graph.node for out in node.output}
    roles = dict.fromkeys(consts, "other initializers")

    def source(value: str) -> str | None:
        while value not in consts:
            node = producer.get(value)
            if node is None or node.op_type not in PASS_THROUGH or not node.input:
                return None
            value = node.input[0]
        return value

    def mark(value: str, role: str) -> bool:
        src = source(value) if value else None
        if src is not None and _RANK[role] < _RANK[roles[src]]:
            roles[src] = role
        return src is not None

    weighted: set[str] = set()  # values computed from a weight: a weighted node's output, rescaled
    scales: set[str] = set()  # quantization parameters computed at run time
    for node in graph.node:
        ins = list(node.input)
        w, b, q = SLOTS.get(node.op_type, ((), (), ()))
        hits = [mark(ins[i], "weights") for i in w if i < len(ins)]
        for role, slots in (("bias", b), ("scales and zero points", q)):
            for i in slots:
                if i < len(ins):
                    mark(ins[i], role)
        if node.op_type == "DynamicQuantizeLinear":
            scales.update(node.output[1:])
        elif node.op_type in ("Cast", "Mul", "Add"):
            _follow(node, weighted, scales, source, mark)
        if any(hits):
            weighted.update(node.output[:1])
    return roles


def _follow(node, weighted: set, scales: set, source, mark) -> None:
    """Carry the weighted and scale marks through a Cast, Mul or Add; mark rescales and biases."""
    ins = [v for v in node.input if v]
    from_weight = any(v in weighted for v in ins)
    from_scale = any(v in scales for v in ins)
    others = [v for v in ins if v not in weighted and v not in scales and source(v) is not None]
    if node.op_type == "Add":
        if from_weight:
            for v in others:
                mark(v, "bias")
        return
    if node.op_type == "Mul" and from_scale:  # a weight's scale times the input's, or a rescale
        for v in others:
            mark(v, "scales and zero points")
    (weighted if from_weight else scales if from_scale else set()).update(node.output[:1])


def _sum_entries(items) -> int:
    return sum(_entry(x.ByteSize()) for x in items)


def _container_bytes(model, payload_of_constants: int) -> dict[str, int]:
    """The graph-and-container bytes, each part computed on its own (see ``CONTAINER_PARTS``)."""
    import onnx

    graph = model.graph
    shell = onnx.GraphProto()
    shell.CopyFrom(graph)
    head = onnx.ModelProto()
    head.CopyFrom(model)
    head.ClearField("graph")
    for field in _GRAPH_LISTS:
        shell.ClearField(field)
    framing = _sum_entries(graph.initializer) - sum(tensor_payload(t) for t in graph.initializer)
    return {
        CONTAINER_PARTS[0]: framing,
        CONTAINER_PARTS[1]: _sum_entries(graph.node) - payload_of_constants,
        CONTAINER_PARTS[2]: _sum_entries([*graph.input, *graph.output, *graph.value_info]),
        CONTAINER_PARTS[3]: head.ByteSize() + 1 + _vlen(graph.ByteSize()) + shell.ByteSize(),
    }


def onnx_size_breakdown(path: str | Path, detail: bool = False) -> pd.DataFrame:
    """The bytes of an ONNX file by part, adding up exactly to the file's size on disk.

    Initializer parts count the tensors' data payload; names, dims, types and framing of the tensors
    go to "graph and container" (the module docstring gives the rule and how roles are traced).

    Args:
        path: the .onnx file (tensors inside it).
        detail: split "graph and container" into ``CONTAINER_PARTS``.

    Returns:
        One row per part (``PARTS``): part, bytes, share (of the file), tensors (how many tensors'
        payload the row holds; 0 for the container rows), dtypes. ``attrs["file_bytes"]`` is the
        file's size and ``attrs["unaccounted_bytes"]`` what the parts computed on their own miss of
        it (0 for a file protobuf wrote; added to the header row so that the bytes add up).
    """
    import onnx

    model = load_onnx(path)
    roles = tensor_roles(model.graph)
    rows = {p: [0, 0, set()] for p in PARTS[:-1]}
    constants = [(t, t.name) for t in model.graph.initializer] + constant_tensors(model.graph)
    for t, name in constants:
        row = rows[roles[name]]
        row[0] += tensor_payload(t)
        row[1] += 1
        row[2].add(onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name)
    in_nodes = sum(tensor_payload(t) for t, _ in constant_tensors(model.graph))
    container = _container_bytes(model, in_nodes)
    size = Path(path).stat().st_size
    unaccounted = size - sum(r[0] for r in rows.values()) - sum(container.values())
    container[CONTAINER_PARTS[3]] += unaccounted
    if not detail:
        container = {PARTS[-1]: sum(container.values())}
    table = [(p, b, n, ", ".join(sorted(d))) for p, (b, n, d) in rows.items()]
    table += [(p, b, 0, "") for p, b in container.items()]
    df = pd.DataFrame(table, columns=["part", "bytes", "tensors", "dtypes"])
    df.insert(2, "share", df.bytes / size)
    df.attrs.update(file_bytes=size, unaccounted_bytes=unaccounted)
    return df


def lean_savings(src: str | Path, lean: str | Path) -> pd.DataFrame:
    """What a lean rewrite (``lean_onnx``) saves, part by part.

    Args:
        src: the .onnx file as written.
        lean: its lean rewrite.

    Returns:
        One row per part (``PARTS``, then "file"): part, bytes, lean_bytes, saved.
    """
    a = onnx_size_breakdown(src).set_index("part").bytes
    b = onnx_size_breakdown(lean).set_index("part").bytes
    df = pd.DataFrame({"bytes": a, "lean_bytes": b}).reindex(list(PARTS))
    df.loc["file"] = df.sum()
    df["saved"] = df.bytes - df.lean_bytes
    return df.rename_axis("part").reset_index()


def size_ratio_table(
    fp32_path: str | Path,
    int8_paths: Mapping[str, str | Path],
    target: float = 3.9,
    lean_dir: str | Path | None = None,
) -> pd.DataFrame:
    """How much smaller each int8 ONNX file is than the fp32 one, as written, lean and at best.

    ``ratio`` is fp32 file bytes / int8 file bytes. ``lean_ratio`` is that of the lean rewrite
    (``lean_onnx``); ``tensor_ratio`` that of the lean file's tensor payload alone (weights, bias,
    scales and zero points, other initializers: what no container can drop); ``weight_ratio`` is
    fp32 weight bytes / int8 weight bytes (4.0 when every weight is int8: the ceiling). A ``*_miss``
    column is the bytes that would have to go for the ratio to reach ``target``, ceil(int8 bytes -
    fp32 bytes / target); negative is headroom.

    Args:
        fp32_path: the float .onnx file.
        int8_paths: {label: int8 .onnx file}.
        target: the size ratio to reach (> 0).
        lean_dir: where to keep the lean files (``<label>.lean.onnx``); None writes them to a
            temporary folder that is removed.

    Returns:
        One row per int8 file: model, fp32_bytes, int8_bytes, ratio, lean_bytes, lean_ratio,
        tensor_bytes, tensor_ratio, weight_ratio, target, target_bytes, miss, lean_miss,
        tensor_miss, met, lean_met.
    """
    import tempfile

    check_float("target", target, 0.0, low_inclusive=False)
    if not isinstance(int8_paths, Mapping) or not int8_paths:
        raise ParameterError("int8_paths", int8_paths, "a non-empty mapping of label to .onnx file")
    load_onnx(fp32_path, "fp32_path")
    for label, path in int8_paths.items():
        load_onnx(path, f"int8_paths[{label!r}]")
    fp32 = onnx_size_breakdown(fp32_path).set_index("part").bytes
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(lean_dir) if lean_dir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        rows = [
            _ratio_row(label, fp32, Path(path), folder / f"{label}.lean.onnx", target)
            for label, path in int8_paths.items()
        ]
    return pd.DataFrame(rows)


def _ratio_row(label: str, fp32: pd.Series, path: Path, lean: Path, target: float) -> dict:
    """One row of ``size_ratio_table``."""
    lean_onnx(path, lean)
    int8 = onnx_size_breakdown(path).set_index("part").bytes
    slim = onnx_size_breakdown(lean).set_index("part").bytes
    fp32_bytes, tensors = int(fp32.sum()), int(slim[list(PARTS[:-1])].sum())
    target_bytes = math.floor(fp32_bytes / target)
    row = {"model": label, "fp32_bytes": fp32_bytes}
    for key, nbytes in (("", int(int8.sum())), ("lean_", int(slim.sum())), ("tensor_", tensors)):
        row[f"{key}bytes" if key else "int8_bytes"] = nbytes
        row[f"{key}ratio"] = fp32_bytes / nbytes
    row["weight_ratio"] = fp32["weights"] / int8["weights"] if int8["weights"] else math.nan
    row.update(target=target, target_bytes=target_bytes)
    for key in ("", "lean_", "tensor_"):
        row[f"{key}miss"] = row[f"{key}bytes" if key else "int8_bytes"] - target_bytes
    row.update(met=row["miss"] <= 0, lean_met=row["lean_miss"] <= 0)
    return row
