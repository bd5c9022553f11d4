"""nbhelpers.compression: the sparse int8 artifact round-trips exactly; the entropy coders count right."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from nbhelpers.compression import (entropy_bits, huffman_bits, int8_linears, load_artifact, pack_int8_sparse, save_artifact,
                                   unpack_float_mlp, unpack_int8_mlp)
from nbhelpers.models import MLP


def _dynamic(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8)


@pytest.fixture()
def sparse_int8():
    torch.manual_seed(0)
    m = MLP(64, hidden=[16, 8])
    with torch.no_grad():
        for lin in (m[1], m[3], m[5]):
            lin.weight[torch.rand_like(lin.weight) < 0.8] = 0  # 80% zeros
    return m, _dynamic(m)


@pytest.mark.parametrize("entropy", [False, True])
def test_artifact_round_trip_gives_identical_int8_model(sparse_int8, tmp_path, entropy):
    _, q = sparse_int8
    path = tmp_path / "a.bin"
    nbytes = save_artifact(pack_int8_sparse(q), path, entropy_coding=entropy)
    assert nbytes == path.stat().st_size
    arrays = load_artifact(path)
    back = unpack_int8_mlp(arrays)
    qs, bs = int8_linears(q), int8_linears(back)
    floats = [l for l in unpack_float_mlp(arrays) if isinstance(l, nn.Linear)]
    for a, b, f in zip(qs, bs, floats):
        assert torch.equal(a.weight().int_repr(), b.weight().int_repr())
        assert a.weight().q_scale() == b.weight().q_scale() and torch.equal(a.bias(), b.bias())
        assert torch.allclose(a.weight().dequantize(), f.weight, rtol=0, atol=1e-7)
    x = torch.randn(5, 64)
    assert torch.equal(q(x), back(x))


def test_entropy_coding_makes_it_smaller(sparse_int8, tmp_path):
    _, q = sparse_int8
    arrays = pack_int8_sparse(q)
    raw = save_artifact(arrays, tmp_path / "raw", False)
    coded = save_artifact(arrays, tmp_path / "xz", True)
    assert coded < raw
    nnz = sum(len(arrays[k]) for k in arrays if k.endswith(".values"))
    assert nnz == sum(int((m.weight().int_repr() != 0).sum()) for m in int8_linears(q))
    assert nnz <= sum(int((l.weight != 0).sum()) for l in sparse_int8[0] if isinstance(l, nn.Linear))


def test_rejects_float_model():
    with pytest.raises(ValueError, match="dynamic-int8"):
        pack_int8_sparse(MLP(4, [2]))


def test_huffman_and_entropy_on_known_counts():
    s = np.array([0] * 4 + [1] * 2 + [2] + [3])  # probabilities 1/2, 1/4, 1/8, 1/8: code lengths 1, 2, 3, 3
    assert huffman_bits(s) == 4 * 1 + 2 * 2 + 3 + 3 == 14
    assert entropy_bits(s) == pytest.approx(14.0)
    assert huffman_bits(np.array([7, 7, 7])) == 0
    u = np.arange(8)
    assert huffman_bits(u) == 24 and entropy_bits(u) == pytest.approx(8 * math.log2(8))
