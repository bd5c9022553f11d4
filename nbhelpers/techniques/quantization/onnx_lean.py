"""An ONNX file written the lean way ONNX allows, with the same outputs bit for bit.

``lean_onnx`` drops what a runtime never reads (doc strings, producer, metadata, value infos,
opsets no node uses, initializers no node uses), keeps one copy of identical initializers, drops
zero points that are all zero where the operator's default is zero (an optional zero point of
DequantizeLinear of a constant, ConvInteger, MatMulInteger; a per-channel zero point of
QLinearConv and QLinearMatMul becomes one scalar zero; QGemm wants one per channel), drops node
attributes equal to the spec's default (Conv's unit strides, Gemm's alpha 1, ...), stores a
constant that is only reshaped by a constant shape in its final shape (the bias reshapes of
dynamic quantization: ONNX Runtime folds them when it loads the model anyway), stores each
tensor in the smaller of its two encodings (raw bytes or the typed field), and gives the values
the shortest unique names and the nodes none (the model's input and output names stay).

Each rewrite is checked with ONNX's checker and by running both files in ONNX Runtime on one
random input: the outputs must be identical bit for bit and ONNX Runtime's optimized graphs must
have the same operators (so the lean file runs the same kernels). The steps that may change what
ONNX Runtime does (the defaults, the reshapes, each group of zero points by operator and type) are
tried one at a time and kept only if the check passes: dropping the int8 weight zero points of a
QDQ model, for one, stops ONNX Runtime from fusing Gemm into QGemm with the same outputs. If the
safe steps alone fail the check, the function fails. A graph with subgraphs (If, Loop, Scan) or
local functions keeps its names and duplicate initializers, since inner graphs may refer to outer
names; ``lean_onnx`` warns when it keeps them.
"""

from __future__ import annotations

import itertools
import string
import warnings
from pathlib import Path

import numpy as np

from nbhelpers.core.params import ParameterError

#: Op type: the inputs whose all-zero constant may be dropped (the operator's default is zero).
OPTIONAL_ZERO_POINTS = {
    "DequantizeLinear": (2,),
    "ConvInteger": (3,),
    "MatMulInteger": (3,),
    "DynamicQuantizeMatMul": (3,),
}
#: Op type: the zero-point inputs that may be a scalar instead of one value per channel.
SCALAR_ZERO_POINTS = {"QLinearConv": (5,), "QLinearMatMul": (5,)}
_CONV = {"auto_pad": b"NOTSET", "dilations": "ones", "group": 1, "pads": "zeros", "strides": "ones"}
_POOL = {
    "auto_pad": b"NOTSET",
    "ceil_mode": 0,
    "count_include_pad": 0,
    "dilations": "ones",
    "pads": "zeros",
    "storage_order": 0,
    "strides": "ones",
}
_GEMM = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}
#: (domain, op type): {attribute: the default the ONNX spec gives it ("ones"/"zeros": a list of
#: ones/zeros of any length)}; only defaults that are the same in every opset.
DEFAULT_ATTRIBUTES = {
    ("ai.onnx", "Conv"): _CONV,
    ("ai.onnx", "ConvInteger"): _CONV,
    ("ai.onnx", "QLinearConv"): _CONV,
    ("ai.onnx", "MaxPool"): _POOL,
    ("ai.onnx", "AveragePool"): _POOL,
    ("ai.onnx", "Gemm"): _GEMM,
    ("com.microsoft", "QGemm"): _GEMM,
    ("ai.onnx", "Flatten"): {"axis": 1},
}
_NO_DEFAULT = object()
_TYPED = {1: "float_data", 2: "int32_data", 3: "int32_data", 6: "int32_data", 7: "int64_data"}
_NAME_CHARS = string.ascii_letters + string.digits


def load_onnx(path: str | Path, name: str = "path"):
    """Load an ONNX model whose tensors are all inside the file.

    Args:
        path: the .onnx file.
        name: the parameter the path came from, for the error.

    Returns:
        The ``onnx.ModelProto``.

    Raises:
        ParameterError: no such file, not an ONNX model, or tensors kept in external files.
    """
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.is_file():
        raise ParameterError(name, str(path), "an existing .onnx file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise ParameterError(name, str(path), f"an ONNX model file (it does not parse: {e})") from e
    if model.ir_version < 1 or not model.HasField("graph") or not model.graph.node:
        raise ParameterError(name, str(path), "an ONNX model file (no IR version or no graph)")
    tensors = list(model.graph.initializer) + [t for t, _ in constant_tensors(model.graph)]
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors):
        raise ParameterError(
            name, str(path), "an ONNX file with its tensors inside (no external data)"
        )
    return model


def constant_tensors(graph) -> list:
    """The tensors of a graph's Constant nodes.

    Args:
        graph: the ``onnx.GraphProto``.

    Returns:
        (TensorProto, the node's output name) for each Constant node that holds a tensor.
    """
    out = []
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            out += [(a.t, node.output[0]) for a in node.attribute if a.name == "value"]
    return out


def _has_subgraphs(model) -> bool:
    """Whether a model has local functions or a node with a graph attribute."""
    kinds = (5, 10)  # AttributeProto.GRAPH, GRAPHS
    return bool(model.functions) or any(
        a.type in kinds for n in model.graph.node for a in n.attribute
    )


def _strip(model) -> None:
    """Drop what a runtime never reads: docs, producer, metadata, value infos, unused opsets."""
    for field in ("doc_string", "producer_name", "producer_version", "domain", "model_version"):
        model.ClearField(field)
    model.ClearField("metadata_props")
    g = model.graph
    g.name = "g"  # the checker wants a name
    for field in ("doc_string", "value_info"):
        g.ClearField(field)
    for item in (*g.node, *g.input, *g.output, *g.initializer):
        item.ClearField("doc_string")
    used = {n.domain for n in g.node} | {n.domain for f in model.functions for n in f.node}
    keep = [o for o in model.opset_import if o.domain in used | {"", "ai.onnx"}]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def zero_point_groups(model) -> dict[tuple[str, int], list[tuple[int, int]]]:
    """The zero points a lean rewrite may drop, grouped by operator and zero-point type.

    Args:
        model: the ``onnx.ModelProto``.

    Returns:
        {(op type, TensorProto data type): [(node index, input index), ...]} of the constant
        all-zero zero points of ``OPTIONAL_ZERO_POINTS`` (a DequantizeLinear's only when it
        dequantizes a constant: an activation's QuantizeLinear keeps its own) and the per-channel
        ones of ``SCALAR_ZERO_POINTS``.
    """
    from onnx import numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer if t.name not in {v.name for v in g.input}}
    groups: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for k, node in enumerate(g.node):
        slots = OPTIONAL_ZERO_POINTS.get(node.op_type, ()) + SCALAR_ZERO_POINTS.get(
            node.op_type, ()
        )
        for i in slots:
            t = inits.get(node.input[i]) if i < len(node.input) else None
            if t is None or numpy_helper.to_array(t).any():
                continue
            if node.op_type == "DequantizeLinear" and node.input[0] not in inits:
                continue
            if node.op_type in SCALAR_ZERO_POINTS and not len(t.dims):
                continue
            groups.setdefault((node.op_type, t.data_type), []).append((k, i))
    return groups


def _drop_zero_points(model, edits: list[tuple[int, int]]) -> None:
    """Drop the optional zero points ``edits`` names; make the others a scalar zero."""
    import onnx

    g = model.graph
    types = {t.name: t.data_type for t in g.initializer}
    for k, i in edits:
        node = g.node[k]
        if node.op_type in OPTIONAL_ZERO_POINTS:
            node.input[i] = ""
        else:
            dtype = types[node.input[i]]
            name = f"zero_{dtype}"
            if name not in types:
                g.initializer.append(onnx.helper.make_tensor(name, dtype, [], [0]))
                types[name] = dtype
            node.input[i] = name
        while node.input and not node.input[-1]:
            node.input.pop()


def _drop_defaults(model) -> None:
    """Remove node attributes that equal the operator's default (``DEFAULT_ATTRIBUTES``)."""
    import onnx

    for node in model.graph.node:
        defaults = DEFAULT_ATTRIBUTES.get((node.domain or "ai.onnx", node.op_type), {})
        keep = []
        for a in node.attribute:
            value = onnx.helper.get_attribute_value(a)
            default = defaults.get(a.name, _NO_DEFAULT)
            if default == "ones" or default == "zeros":
                is_default = isinstance(value, list) and value == [int(default == "ones")] * len(
                    value
                )
            else:
                is_default = value == default
            if not is_default:
                keep.append(a)
        del node.attribute[:]
        node.attribute.extend(keep)


def _fold_reshapes(model) -> None:
    """Store a constant that a Reshape by a constant shape reads in its new shape, drop the node."""
    from onnx import numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    fixed = {v.name for v in (*g.input, *g.output)}
    reads: dict[str, int] = {}
    for node in g.node:
        for v in node.input:
            reads[v] = reads.get(v, 0) + 1
    keep = []
    for node in g.node:
        data, shape = (list(node.input) + ["", ""])[:2]
        foldable = node.op_type == "Reshape" and node.domain in ("", "ai.onnx")
        if foldable and data in inits and shape in inits and reads[data] == 1:
            dims = numpy_helper.to_array(inits[shape])
            if 0 not in dims and not {data, shape, node.output[0]} & fixed:
                values = numpy_helper.to_array(inits[data]).reshape(dims)
                inits[data].CopyFrom(numpy_helper.from_array(values, node.output[0]))
                continue
        keep.append(node)
    del g.node[:]
    g.node.extend(keep)


def _drop_unused(model) -> None:
    """Remove initializers that no node reads and no graph output or input names."""
    g = model.graph
    used = {v for n in g.node for v in n.input} | {v.name for v in (*g.output, *g.input)}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


def _dedupe(model) -> None:
    """Keep one initializer of each (type, dims, values); point the nodes at it."""
    g = model.graph
    fixed = {v.name for v in (*g.input, *g.output)}
    first, alias, keep = {}, {}, []
    for t in g.initializer:
        key = (t.data_type, tuple(t.dims), _values(t))
        if key in first and t.name not in fixed:
            alias[t.name] = first[key]
        else:
            first.setdefault(key, t.name)
            keep.append(t)
    del g.initializer[:]
    g.initializer.extend(keep)
    for node in g.node:
        for i, v in enumerate(node.input):
            node.input[i] = alias.get(v, v)


def _values(t) -> bytes:
    """A tensor's values as bytes (whatever field holds them)."""
    from onnx import numpy_helper

    return numpy_helper.to_array(t).tobytes()


def _rename(model) -> None:
    """Shortest unique names for the values (most read first), none for the nodes."""
    g = model.graph
    fixed = {v.name for v in (*g.input, *g.output)}
    reads: dict[str, int] = {}
    for name in [t.name for t in g.initializer] + [
        v for n in g.node for v in (*n.input, *n.output)
    ]:
        if name and name not in fixed:
            reads[name] = reads.get(name, 0) + 1
    short = (
        "".join(c)
        for k in itertools.count(1)
        for c in itertools.product(_NAME_CHARS, repeat=k)
        if "".join(c) not in fixed
    )
    new = {old: next(short) for old in sorted(reads, key=lambda v: -reads[v])}
    for t in g.initializer:
        t.name = new.get(t.name, t.name)
    for node in g.node:
        node.ClearField("name")
        for seq in (node.input, node.output):
            for i, v in enumerate(seq):
                seq[i] = new.get(v, v)


def _smaller_encoding(model) -> None:
    """Store each initializer as raw bytes or in its typed field, whichever is smaller."""
    import onnx
    from onnx import numpy_helper

    g = model.graph
    for i, t in enumerate(g.initializer):
        field = _TYPED.get(t.data_type)
        if field is None:
            continue
        values = numpy_helper.to_array(t)
        raw = numpy_helper.from_array(values, t.name)
        typed = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims)
        getattr(typed, field).extend(values.flatten().tolist())
        best = min((raw, typed), key=lambda x: x.ByteSize())
        if best.ByteSize() < t.ByteSize():
            g.initializer[i].CopyFrom(best)


def _lean_model(model, edits: list[tuple[int, int]], steps: set[str]):
    """A lean copy of a model (see the module docstring), dropping the zero points ``edits`` names
    (``zero_point_groups``) and taking the optional ``steps`` ("defaults", "reshapes")."""
    import onnx

    lean = onnx.ModelProto()
    lean.CopyFrom(model)
    _strip(lean)
    _drop_zero_points(lean, edits)
    if "defaults" in steps:
        _drop_defaults(lean)
    if "reshapes" in steps:
        _fold_reshapes(lean)
    _drop_unused(lean)
    if not _has_subgraphs(lean):
        _dedupe(lean)
        _rename(lean)
    _smaller_encoding(lean)
    return lean


def _random_feed(model, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """A random input for each graph input (symbolic dims set to ``batch``)."""
    import onnx

    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feed = {}
    for v in model.graph.input:
        if v.name in inits:
            continue
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        x = rng.random(shape) if dtype.kind == "f" else rng.integers(0, 10, shape)
        feed[v.name] = x.astype(dtype)
    return feed


def _run(model_bytes: bytes, feed: dict) -> tuple[list[np.ndarray], list[str]]:
    """Outputs of a serialized model on one input in ONNX Runtime (one thread), and the sorted op
    types of the graph ONNX Runtime optimized it into (the kernels it runs)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        outputs = session.run(None, feed)
        graph = onnx.load(opts.optimized_model_filepath, load_external_data=False).graph
    return outputs, sorted(f"{n.domain}:{n.op_type}" for n in graph.node)


def _same(a: tuple, b: tuple) -> bool:
    """Whether two ``_run`` results have the same kernels and outputs bit for bit."""
    (a, ops_a), (b, ops_b) = a, b
    return (
        ops_a == ops_b
        and len(a) == len(b)
        and all(
            x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
            for x, y in zip(a, b)
        )
    )


def _verified(lean, feed: dict, want: tuple) -> bytes | None:
    """The serialized lean model if it passes the checker and runs as ``want`` says, else None."""
    import onnx

    onnx.checker.check_model(lean)
    data = lean.SerializeToString()
    try:
        got = _run(data, feed)
    except Exception:  # noqa: BLE001 - ONNX Runtime refuses the rewrite
        return None
    return data if _same(want, got) else None


def lean_onnx(src: str | Path, dst: str | Path) -> Path:
    """Write an ONNX model the lean way ONNX allows, with outputs identical bit for bit.

    See the module docstring for what goes. The lean model passes ``onnx.checker`` and gives the
    same outputs as ``src`` in ONNX Runtime on a random input (symbolic dims 2); the bytes saved
    are ``onnx_size.lean_savings(src, dst)``.

    Args:
        src: the .onnx file (tensors inside it).
        dst: the lean .onnx file to write (not ``src``).

    Returns:
        The path of the lean file.

    Raises:
        ParameterError: ``src`` is not an ONNX file, or ``dst`` is ``src``.
        RuntimeError: no lean rewrite gives the same outputs (not seen on ONNX Runtime's int8).
    """
    model = load_onnx(src, "src")
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise ParameterError("dst", str(dst), "a path other than src")
    feed = _random_feed(model)
    want = _run(model.SerializeToString(), feed)
    if _has_subgraphs(model):
        warnings.warn(f"{src.name}: subgraphs or functions, so names and duplicates are kept")
    groups = zero_point_groups(model)
    edits: list[tuple[int, int]] = []
    steps: set[str] = set()
    best = None
    # the safe steps alone, then each optional step on top of those that passed
    for step in [None, "defaults", "reshapes", *groups]:
        trial = edits + groups[step] if step in groups else edits
        more = steps | {step} if isinstance(step, str) else steps
        data = _verified(_lean_model(model, trial, more), feed, want)
        if data is not None:
            edits, steps, best = trial, more, data
        elif step is None:
            break
    if best is not None:
        dst.write_bytes(best)
        return dst
    raise RuntimeError(f"{src}: the lean rewrite changes the outputs in ONNX Runtime")
