"""Unit tests of nbhelpers.techniques.quantization.onnx_size and onnx_lean: an ONNX file's bytes by
part add up to the file, the weight bytes are the weight elements, the lean rewrite gives the same
outputs bit for bit and is smaller, the size-ratio arithmetic, and bad input (issue 30)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from nbhelpers.core.models import LeNet5
from nbhelpers.core.params import ParameterError
from nbhelpers.techniques import quantization as Q
from nbhelpers.techniques.quantization import onnx_lean, onnx_size


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny LeNet-5 (8x8 inputs) in fp32 and in ONNX Runtime's dynamic, QDQ and QOperator int8."""
    d = tmp_path_factory.mktemp("onnx_size")
    torch.manual_seed(0)
    model = LeNet5((1, 8, 8)).eval()
    x = torch.rand(16, 1, 8, 8)
    fp32 = Q.export_onnx(model, d / "fp32.onnx", x)
    out = {"model": model, "fp32": fp32, "dynamic": Q.ort_quantize(fp32, d / "dyn.onnx")}
    for fmt in Q.ORT_FORMATS:
        out[fmt] = Q.ort_quantize(fp32, d / f"{fmt}.onnx", [(x, None)], 1, fmt=fmt)
    return out


INT8 = ("dynamic", "QDQ", "QOperator")


def _counts(model: torch.nn.Module) -> tuple[int, int]:
    """Elements of the weights and of the biases of a model."""
    params = dict(model.named_parameters())
    w = sum(p.numel() for n, p in params.items() if n.endswith("weight"))
    b = sum(p.numel() for n, p in params.items() if n.endswith("bias"))
    return w, b


@pytest.mark.parametrize("kind", ("fp32", *INT8))
def test_parts_add_up_exactly_to_the_file(files, kind):
    path = files[kind]
    size = path.stat().st_size
    for detail in (False, True):
        df = onnx_size.onnx_size_breakdown(path, detail=detail)
        assert df.attrs["unaccounted_bytes"] == 0  # each part computed on its own
        assert df.bytes.sum() == size == df.attrs["file_bytes"]
        assert (df.bytes >= 0).all() and df.share.sum() == pytest.approx(1.0)
    assert list(df.part) == [*onnx_size.PARTS[:-1], *onnx_size.CONTAINER_PARTS]


def test_weight_and_bias_bytes_are_their_elements(files):
    n_w, n_b = _counts(files["model"])
    assert (n_w, n_b) == (150 + 2400 + 64 * 120 + 120 * 84 + 84 * 10, 6 + 16 + 120 + 84 + 10)
    parts = {
        k: onnx_size.onnx_size_breakdown(files[k]).set_index("part") for k in files if k != "model"
    }
    assert parts["fp32"].loc["weights", "bytes"] == 4 * n_w
    assert parts["fp32"].loc["bias", "bytes"] == 4 * n_b
    assert parts["fp32"].loc["scales and zero points", "tensors"] == 0
    for kind in INT8:
        p = parts[kind]
        assert p.loc["weights", "bytes"] == n_w and p.loc["weights", "dtypes"] == "int8"
        assert p.loc["weights", "tensors"] == 5 and p.loc["bias", "tensors"] == 5
        assert p.loc["bias", "bytes"] == 4 * n_b  # float32 (dynamic) or int32 (static)
    # static per-channel: a float32 scale and an int8 zero point (0: one varint byte) per channel
    assert parts["QOperator"].loc["scales and zero points", "bytes"] >= 5 * n_b
    assert parts["dynamic"].loc["other initializers", "dtypes"] == "int64"  # the bias reshapes


def test_payload_counts_values_not_framing():
    assert (
        onnx_size.tensor_payload(helper.make_tensor("a", TensorProto.FLOAT, [3], [1, 2, 3])) == 12
    )
    # int8 in int32_data: varints, 1 byte for 0 and 5, 10 for -1
    assert (
        onnx_size.tensor_payload(helper.make_tensor("z", TensorProto.INT8, [3], [0, -1, 5])) == 12
    )
    raw = numpy_helper.from_array(np.zeros(200, np.int8), "w")
    assert onnx_size.tensor_payload(raw) == 200 < raw.ByteSize()


def test_a_constant_weight_and_an_added_bias_are_traced(tmp_path):
    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], np.ones(12).tolist())
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["w"], value=w),
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(np.ones(3, np.float32), "b")],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    df = onnx_size.onnx_size_breakdown(path).set_index("part")
    assert df.loc["weights", "bytes"] == 48 and df.loc["bias", "bytes"] == 12
    assert df.bytes.sum() == path.stat().st_size


def _run(path, x: np.ndarray) -> np.ndarray:
    return Q.OrtModel(path)(torch.from_numpy(x))


@pytest.mark.parametrize("kind", INT8)
def test_lean_model_has_the_same_outputs_and_is_smaller(files, kind, tmp_path):
    src = files[kind]
    lean = onnx_lean.lean_onnx(src, tmp_path / "lean.onnx")
    onnx.checker.check_model(str(lean))
    x = np.random.default_rng(3).random((5, 1, 8, 8), dtype=np.float32)
    a, b = _run(src, x), _run(lean, x)
    assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    saved = onnx_size.lean_savings(src, lean).set_index("part")
    assert saved.loc["file", "saved"] == src.stat().st_size - lean.stat().st_size > 0
    assert saved.loc["weights", "saved"] == 0  # the weights cannot go
    m = onnx.load(str(lean))
    assert not m.producer_name and not m.metadata_props and not m.graph.value_info
    assert all(not n.name for n in m.graph.node)


def test_lean_keeps_the_zero_points_whose_loss_changes_the_kernels(files, tmp_path):
    """Dropping a QDQ model's int8 weight zero points keeps the outputs but stops ONNX Runtime
    from fusing Gemm into QGemm; the lean rewrite keeps them, and drops the int32 bias ones."""
    src = files["QDQ"]
    groups = onnx_lean.zero_point_groups(onnx.load(str(src)))
    assert set(groups) == {("DequantizeLinear", TensorProto.INT8), ("DequantizeLinear", 6)}
    m = onnx.load(str(onnx_lean.lean_onnx(src, tmp_path / "lean.onnx")))
    types = {t.name: t.data_type for t in m.graph.initializer}
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in types]
    kept = {types[n.input[0]] for n in dq if len(n.input) == 3}
    assert kept == {TensorProto.INT8} and len(dq) == 10


def test_ratio_table_arithmetic(files, tmp_path):
    int8 = {k: files[k] for k in INT8}
    fp32 = files["fp32"].stat().st_size
    for target in (1.0, 3.9, 100.0):
        t = onnx_size.size_ratio_table(files["fp32"], int8, target, lean_dir=tmp_path)
        assert list(t.model) == list(INT8)
        assert (t.fp32_bytes == fp32).all()
        assert (t.int8_bytes == [p.stat().st_size for p in int8.values()]).all()
        assert np.allclose(t.ratio, fp32 / t.int8_bytes)
        assert (t.lean_bytes == [(tmp_path / f"{k}.lean.onnx").stat().st_size for k in INT8]).all()
        assert (t.target_bytes == math.floor(fp32 / target)).all()
        assert (t.miss == t.int8_bytes - t.target_bytes).all()
        assert (t.met == (t.ratio >= target)).all() and (
            t.lean_met == (t.lean_ratio >= target)
        ).all()
        assert (t.lean_bytes < t.int8_bytes).all() and (t.tensor_bytes < t.lean_bytes).all()
        assert (t.weight_ratio == 4.0).all()  # every weight in int8: 4 bytes become 1
    assert t.met.sum() == 0 and (t.miss > 0).all()  # target 100: missed by every file


def test_bad_input_is_named(files, tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    for bad in (tmp_path / "missing.onnx", text):
        with pytest.raises(ParameterError) as e:
            onnx_size.onnx_size_breakdown(bad)
        assert e.value.name == "path"
    int8 = {"dynamic": files["dynamic"]}
    for target in (0, -1.0, float("nan"), "3.9"):
        with pytest.raises(ParameterError) as e:
            onnx_size.size_ratio_table(files["fp32"], int8, target)
        assert e.value.name == "target"
    with pytest.raises(ParameterError) as e:
        onnx_size.size_ratio_table(files["fp32"], {}, 3.9)
    assert e.value.name == "int8_paths"
    with pytest.raises(ParameterError) as e:
        onnx_size.size_ratio_table(files["fp32"], {"x": tmp_path / "none.onnx"}, 3.9)
    assert e.value.name == "int8_paths['x']"
    with pytest.raises(ParameterError) as e:
        onnx_size.size_ratio_table(text, int8, 3.9)
    assert e.value.name == "fp32_path"
    with pytest.raises(ParameterError) as e:
        onnx_lean.lean_onnx(files["dynamic"], files["dynamic"])
    assert e.value.name == "dst"
