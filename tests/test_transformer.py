"""nbhelpers.core.transformer: the character transformer's size, causality, attention against the
written-out formula, every norm and placement, tied weights, the sampler and bad arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nbhelpers.core import transformer as tr
from nbhelpers.core.params import ParameterError

VOCAB = 84  # the Shakespeare training plays' characters, the unknown symbol included


def _small(**kw) -> tr.CharTransformer:
    torch.manual_seed(0)
    cfg = dict(vocab_size=VOCAB, context=16, width=32, depth=2, heads=4)
    return tr.CharTransformer(**{**cfg, **kw})


def test_the_default_model_has_the_documented_parameter_count():
    m = tr.CharTransformer(VOCAB)
    per_block = (128 * 384 + 384) + (128 * 128 + 128) + (128 * 512 + 512) + (512 * 128 + 128)
    per_block += 2 * 2 * 128  # two LayerNorms, weight and bias
    assert per_block == 198_272
    expected = 4 * per_block + VOCAB * 128 + 128 * 128 + 2 * 128
    assert tr.parameter_count(m) == expected == 820_480
    assert (m.context, len(m.blocks), m.blocks[0].attn.heads) == (128, 4, 4)


def test_output_head_is_tied_to_the_token_embedding():
    m = _small()
    assert m.head.weight is m.tok_emb.weight
    assert m.head.weight.data_ptr() == m.tok_emb.weight.data_ptr()
    with torch.no_grad():
        m.tok_emb.weight[3, 0] = 7.0
    assert float(m.head.weight[3, 0].detach()) == 7.0
    names = [n for n, _ in m.named_parameters()]
    assert "tok_emb.weight" in names and "head.weight" not in names  # counted once


@pytest.mark.parametrize("placement", tr.PLACEMENTS)
@pytest.mark.parametrize("norm", tr.NORM_TYPES)  # batch norm too: in eval mode, per token
def test_changing_a_future_character_leaves_earlier_logits_unchanged(norm, placement):
    m = _small(norm=norm, placement=placement).eval()
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    x2 = x.clone()
    x2[:, 10] = (x[:, 10] + 1) % VOCAB
    a, b = m(x), m(x2)
    assert torch.equal(a[:, :10], b[:, :10])  # the past does not see the change, bit for bit
    assert not torch.allclose(a[:, 10:], b[:, 10:])  # from position 10 on, it does


def test_written_out_attention_equals_scaled_dot_product_attention():
    m = _small().eval()
    attn = m.blocks[1].attn
    h = torch.randn(3, 16, 32, generator=torch.Generator().manual_seed(2))
    ref, fused = attn.written_out(h), attn.heads_output(h)
    assert ref.shape == fused.shape == (3, 4, 16, 8)
    assert torch.allclose(ref, fused, rtol=0, atol=1e-5), (ref - fused).abs().max()
    x = torch.randint(0, VOCAB, (3, 16), generator=torch.Generator().manual_seed(3))
    fast = m(x)
    slow = tr.set_attention(m, "written_out")(x)
    assert torch.allclose(fast, slow, rtol=0, atol=1e-5), (fast - slow).abs().max()
    assert all(
        a.impl == "written_out" for a in m.modules() if isinstance(a, tr.CausalSelfAttention)
    )
    # the reference is not SDPA without its mask: the check can fail
    q, k, v = attn._split(h)
    unmasked = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert not torch.allclose(ref, unmasked, atol=1e-3)


NORM_CLASSES = {
    "layernorm": nn.LayerNorm,
    "rmsnorm": nn.RMSNorm,
    "batchnorm": tr.TokenBatchNorm,
    "none": nn.Identity,
}


@pytest.mark.parametrize("placement", tr.PLACEMENTS)
@pytest.mark.parametrize("norm", tr.NORM_TYPES)
def test_every_norm_and_placement_builds_runs_and_learns(norm, placement):
    m = _small(norm=norm, placement=placement, dropout=0.1)
    assert isinstance(m.blocks[0].norm1, NORM_CLASSES[norm]) and m.blocks[0].placement == placement
    assert isinstance(m.norm_f, NORM_CLASSES[norm] if placement == "pre" else nn.Identity)
    x = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(4))
    logits = m(x)
    assert logits.shape == (4, 16, VOCAB) and torch.isfinite(logits).all()
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), x.roll(-1, 1).flatten())
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())
    assert m.eval()(x[:1, :5]).shape == (1, 5, VOCAB)  # shorter inputs, batch of one


def test_pre_and_post_placement_compute_different_functions():
    pre, post = _small(placement="pre").eval(), _small(placement="post").eval()
    post.load_state_dict(pre.state_dict(), strict=False)  # post has no final norm
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(pre(x), post(x))


def test_generate_is_seeded_keeps_the_prompt_and_restores_training_mode():
    m = _small().train()
    prompt = torch.tensor([5, 6, 7])
    a = tr.generate(m, prompt, 40, 1.0, torch.Generator().manual_seed(0))
    b = tr.generate(m, prompt, 40, 1.0, torch.Generator().manual_seed(0))
    c = tr.generate(m, prompt, 40, 1.0, torch.Generator().manual_seed(1))
    assert a.shape == (43,) and torch.equal(a[:3], prompt) and torch.equal(a, b)
    assert not torch.equal(a, c) and int(a.max()) < VOCAB and m.training
    greedy = tr.generate(m, prompt, 20, 0.0)  # longer than the context of 16: it slides
    with torch.no_grad():
        nxt = m.eval()(greedy[-17:-1].unsqueeze(0))[0, -1].argmax()
    assert int(greedy[-1]) == int(nxt)
    assert tr.generate(m, prompt, 0).tolist() == [5, 6, 7]


def test_bad_arguments_are_refused_naming_the_parameter():
    cases = [
        ("heads", dict(width=30, heads=4)),
        ("norm", dict(norm="groupnorm")),
        ("placement", dict(placement="sandwich")),
        ("context", dict(context=0)),
        ("dropout", dict(dropout=1.0)),
        ("vocab_size", dict(vocab_size=1)),
        ("depth", dict(depth=0)),
    ]
    for name, kw in cases:
        with pytest.raises(ParameterError) as e:
            _small(**kw)
        assert e.value.name == name, (name, e.value)
    m = _small()
    for name, call in [
        ("context", lambda: m(torch.zeros(1, 17, dtype=torch.long))),
        ("impl", lambda: tr.set_attention(m, "flash")),
        ("temperature", lambda: tr.generate(m, torch.tensor([1]), 5, -1.0)),
        ("prompt_ids", lambda: tr.generate(m, torch.tensor([], dtype=torch.long), 5)),
        ("n", lambda: tr.generate(m, torch.tensor([1]), -1)),
    ]:
        with pytest.raises(ParameterError) as e:
            call()
        assert e.value.name == name, (name, e.value)
