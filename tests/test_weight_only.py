"""nbhelpers.techniques.quantization.weight_only: per-group codes and float16 scales, exact bytes,
the tied head left alone, the outlier effect, dynamic int8's bytes, and bad arguments."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nbhelpers.core import transformer as tr
from nbhelpers.core.params import ParameterError
from nbhelpers.techniques import quantization as Q


def _small() -> tr.CharTransformer:
    torch.manual_seed(0)
    return tr.CharTransformer(20, context=8, width=32, depth=2, heads=4).eval()


def test_a_group_is_quantized_by_the_formula_with_a_float16_scale():
    w = torch.tensor([[-1.0, -0.25, 0.0, 0.5, 2.0, 1.0, 0.1, -0.3]])
    w_hat, info = Q.quantize_weight_groups(w, bits=4, group_size=4)
    # group 1: range [-1, 0.5], s = 1.5 / 15 = 0.1 (as float16), z = round(1 / s) = 10
    s1 = torch.tensor(0.1).half().float()
    q1 = torch.clamp(torch.round(w[0, :4] / s1) + 10, 0, 15)
    assert torch.equal(w_hat[0, :4], s1 * (q1 - 10))
    # group 2: range [-0.3, 2.0], z = round(0.3 / s2)
    s2 = torch.tensor(2.3 / 15).half().float()
    z2 = torch.round(0.3 / s2)
    assert torch.equal(
        w_hat[0, 4:], s2 * (torch.clamp(torch.round(w[0, 4:] / s2) + z2, 0, 15) - z2)
    )
    assert float(w_hat[0, 2]) == 0.0  # zero is exact
    assert (w - w_hat).abs().max() <= max(float(s1), float(s2)) / 2 + 1e-7
    assert info == {"weights": 8, "groups": 2, "code_bytes": 4, "scale_bytes": 4,
                    "zero_bytes": 1, "fp32_bytes": 32, "bytes": 9}  # fmt: skip


def test_at_most_two_to_the_bits_levels_per_group_and_finer_groups_err_less():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    errs = {}
    for g in (32, 64, 128, None):
        w_hat, info = Q.quantize_weight_groups(w, 4, g)
        per = w_hat.reshape(-1, g or 256)
        assert max(len(r.unique()) for r in per) <= 16
        errs[g] = float((w - w_hat).norm())
        assert info["groups"] == 64 * 256 // (g or 256)
    assert errs[32] < errs[64] < errs[128] < errs[None]
    tensor_hat, info = Q.quantize_weight_groups(w, 8, per_tensor=True)
    assert info["groups"] == 1 and info["bytes"] == 64 * 256 + 2 + 1
    assert float((w - tensor_hat).norm()) > float((w - Q.quantize_weight_groups(w, 8)[0]).norm())


def test_bytes_match_the_packed_format_and_the_ratios_the_lesson_targets():
    w = torch.randn(384, 128)
    _, int4 = Q.quantize_weight_groups(w, 4, 64)
    assert int4["bytes"] == 384 * 128 // 2 + 768 * 2 + 768 // 2  # codes, fp16 scales, uint4 zeros
    assert int4["fp32_bytes"] / int4["bytes"] == pytest.approx(4 / (0.5 + 2.5 / 64))  # 7.42x
    _, int8 = Q.quantize_weight_groups(w, 8)
    assert int8["bytes"] == 384 * 128 + 384 * 3  # one fp16 scale and one uint8 zero per row
    assert 3.5 < int8["fp32_bytes"] / int8["bytes"] < 4.0


def test_weight_only_model_quantizes_the_block_linears_and_leaves_the_tied_head():
    m = _small()
    names = [n for n, _ in Q.quantizable_linears(m)]
    assert names == [f"blocks.{b}.{p}" for b in range(2)
                     for p in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")]  # fmt: skip
    q, table = Q.weight_only_model(m, 4, 16)
    assert list(table.index) == [*names, "total"]
    assert torch.equal(q.tok_emb.weight, m.tok_emb.weight) and q.head.weight is q.tok_emb.weight
    for n in names:
        w_hat, _ = Q.quantize_weight_groups(m.get_submodule(n).weight, 4, 16)
        assert torch.equal(q.get_submodule(n).weight, w_hat)
        assert not torch.equal(q.get_submodule(n).weight, m.get_submodule(n).weight)
    total = table.loc["total"]
    assert total["bytes"] == table["bytes"].iloc[:-1].sum()
    assert total["ratio"] == pytest.approx(total["fp32_bytes"] / total["bytes"])
    weights = sum(m.get_submodule(n).weight.numel() for n in names)
    assert total["weights"] == weights and total["fp32_bytes"] == 4 * weights
    x = torch.randint(0, 20, (2, 8))
    assert not torch.equal(q(x), m(x)) and torch.allclose(q(x), m(x), atol=0.5)
    one, t1 = Q.weight_only_model(m, 8, layers=[names[0]])
    assert list(t1.index) == [names[0], "total"]
    assert torch.equal(one.get_submodule(names[1]).weight, m.get_submodule(names[1]).weight)


def test_an_outlier_costs_per_tensor_more_than_per_channel():
    lin = nn.Linear(64, 32)
    with torch.no_grad():
        lin.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(2))
        lin.weight[3, 5] = 1.0  # one large weight widens the per-tensor range 10x or more
    table = Q.outlier_table(nn.Sequential(lin))
    row = table.loc["0"]
    assert row["max_over_mean"] > 50 and row["row_max_over_mean"] < 10
    assert row["rel_error_per_tensor"] > 3 * row["rel_error_per_channel"]  # about 4.9x


def test_dynamic_int8_bytes_are_one_byte_per_weight_plus_its_scale():
    m = _small()
    qm = Q.dynamic_int8(m)
    names = [n for n, _ in Q.quantizable_linears(m)]
    table = Q.dynamic_linear_bytes(qm, names)
    weights = sum(m.get_submodule(n).weight.numel() for n in names)
    assert table.loc["total", "bytes"] == weights + 16 * len(names)
    assert table.loc["total", "ratio"] == pytest.approx(4 * weights / (weights + 16 * len(names)))
    assert set(table.qscheme.iloc[:-1]) == {"per_tensor_affine"}
    # the tied head becomes its own int8 copy: the embedding stays float
    assert qm.tok_emb.weight.dtype == torch.float32 and qm.head.weight().dtype == torch.qint8


def test_bad_arguments_are_refused_naming_the_parameter():
    m = _small()
    w = torch.randn(4, 32)
    cases = [
        ("bits", lambda: Q.quantize_weight_groups(w, 1)),
        ("bits", lambda: Q.quantize_weight_groups(w, 16)),
        ("group_size", lambda: Q.quantize_weight_groups(w, 4, 12)),
        ("group_size", lambda: Q.quantize_weight_groups(w, 4, 1)),
        ("group_size", lambda: Q.quantize_weight_groups(w, 4, 8, per_tensor=True)),
        ("w", lambda: Q.quantize_weight_groups(torch.randn(32), 4)),
        ("group_size", lambda: Q.weight_only_model(m, 4, 64)),  # 64 does not divide the width 32
        ("layers", lambda: Q.weight_only_model(m, 4, layers=["head"])),
        ("GROUP_SIZES", lambda: Q.check_group_size("GROUP_SIZES", 48, [128, 512])),
    ]
    for name, call in cases:
        with pytest.raises(ParameterError) as e:
            call()
        assert e.value.name == name, (name, e.value)
    assert Q.check_group_size("GROUP_SIZES", 64, [128, 512]) == 64
    assert Q.format_name(4, 64) == "int4 g64" and Q.format_name(8) == "int8 per-channel"
    assert Q.format_name(8, per_tensor=True) == "int8 per-tensor"
    assert math.isclose(Q.weight_only_model(m, 8)[1].loc["total", "rel_error"], 0.0, abs_tol=0.02)
