"""ONNX Runtime dynamic int8 of a character transformer (``techniques.quantization.onnx_lm``):
only the MatMul weights quantized, fp32 agreement with torch, losses, exact byte counts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from nbhelpers.core.params import ParameterError
from nbhelpers.core.transformer import CharTransformer
from nbhelpers.measure.bpc import char_losses
from nbhelpers.techniques import quantization as Q

VOCAB, CONTEXT, WIDTH, DEPTH = 11, 8, 16, 2


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> tuple[CharTransformer, Path, Path, torch.Tensor, torch.Tensor]:
    """A random tiny model, its fp32 and int8 ONNX files, and windows to score."""
    torch.manual_seed(0)
    model = CharTransformer(VOCAB, context=CONTEXT, width=WIDTH, depth=DEPTH, heads=2).eval()
    folder = tmp_path_factory.mktemp("onnx_lm")
    ids = torch.randint(0, VOCAB, (6, CONTEXT + 1), generator=torch.Generator().manual_seed(1))
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    f32 = Q.export_onnx(model, folder / "fp32.onnx", x)
    i8 = Q.ort_dynamic_int8(f32, folder / "int8.onnx", reduce_range=False)
    return model, f32, i8, x, y


def test_only_the_matmul_weights_are_quantized(lm):
    _, _, i8, _, _ = lm
    graph = onnx.load(str(i8)).graph
    ops = Counter(n.op_type for n in graph.node)
    assert ops["MatMulInteger"] == 4 * DEPTH + 1  # q/k/v, output, fc, proj per block; the head
    assert ops["MatMul"] == 2 * DEPTH  # attention's q k^T and weights times v stay float
    types = {t.name: t.data_type for t in graph.initializer}
    assert types["tok_emb.weight"] == onnx.TensorProto.FLOAT  # the embeddings stay float
    assert types["pos_emb.weight"] == onnx.TensorProto.FLOAT


def test_fp32_ort_agrees_with_torch_within_its_rounding(lm):
    model, f32, _, x, y = lm
    session = Q.OrtModel(f32)
    check = Q.fp32_agreement(model, session, x)
    assert check["within"] and 0 < check["max_abs_diff"] <= check["tolerance"]
    assert check["tolerance"] >= Q.AGREEMENT_FACTOR * check["torch_fp32_rounding"]
    ours = Q.session_char_losses(session, x, y, batch_size=4)
    ref = char_losses(model, x, y, batch_size=4)
    assert ours.shape == ref.shape == (x.numel(),) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def test_the_agreement_check_can_fail(lm):
    model, f32, _, x, _ = lm
    session = Q.OrtModel(f32)
    check = Q.fp32_agreement(model, lambda b: session(b) + 1e-3, x)
    assert not check["within"] and check["max_abs_diff"] > check["tolerance"]


def test_int8_is_close_but_not_equal(lm):
    model, _, i8, x, y = lm
    ours = Q.session_char_losses(Q.OrtModel(i8), x, y)
    ref = char_losses(model, x, y)
    assert 0 < np.abs(ours - ref).max() < 0.1


def test_symbolic_shape_inference_changes_nothing_here(lm):
    _, f32, i8, x, _ = lm
    sym = Q.ort_dynamic_int8(f32, i8.with_name("int8_sym.onnx"), False, symbolic_shapes=True)
    np.testing.assert_array_equal(Q.OrtModel(sym)(x), Q.OrtModel(i8)(x))


def test_weight_bytes_exact(lm):
    _, f32, i8, _, _ = lm
    table = Q.weight_bytes({"fp32": f32, "int8": i8})
    n = DEPTH * (3 * WIDTH * WIDTH + WIDTH * WIDTH + 2 * 4 * WIDTH * WIDTH) + VOCAB * WIDTH
    tensors = 4 * DEPTH + 1
    assert table.loc["fp32", "weight_bytes"] == 4 * n
    # one int8 per weight, a float32 scale and an int8 zero point per tensor
    assert table.loc["int8", "weight_bytes"] == n + tensors * (4 + 1)
    assert table.weights.tolist() == [tensors, tensors]
    assert table.loc["fp32", "file_bytes"] == f32.stat().st_size
    assert table.loc["int8", "weight_ratio"] == pytest.approx(4 * n / (n + 5 * tensors))
    assert table.loc["fp32", "weight_ratio"] == 1.0


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda s, x, y: Q.session_char_losses(s, x[0], y), "x"),
        (lambda s, x, y: Q.session_char_losses(s, x, y[:2]), "y"),
        (lambda s, x, y: Q.session_char_losses(s, x, y, batch_size=0), "batch_size"),
        (lambda s, x, y: Q.weight_bytes({}), "paths"),
        (lambda s, x, y: Q.weight_bytes({"a": s.path}, "b"), "reference"),
        (
            lambda s, x, y: Q.ort_dynamic_int8(s.path, s.path.with_name("q.onnx"), op_types=[]),
            "op_types",
        ),  # fmt: skip
        (
            lambda s, x, y: Q.ort_dynamic_int8(s.path, s.path.with_name("q.onnx"), reduce_range=1),
            "reduce_range",
        ),  # fmt: skip
    ],
)
def test_bad_input_names_the_parameter(lm, call, name):
    _, f32, _, x, y = lm
    with pytest.raises(ParameterError) as err:
        call(Q.OrtModel(f32), x, y)
    assert err.value.name == name
