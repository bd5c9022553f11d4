"""Attention heads of a user's own model cut by ``neuron_pruning.prune_channels``:
``nn.MultiheadAttention`` (batch_first or not), a module with separate q/k/v projections, one with
a fused qkv projection, one whose head count is declared, the project's CharTransformer; the cut
model against the original with the removed heads silenced; the refusals and bad arguments.

Tolerances. The cut and the silenced model compute the same sums (a zeroed column adds exactly
0), in another order and, for ``nn.MultiheadAttention``, through other kernels. Each output ends a
chain of at most 6 sums (embedding, q/k/v projection, scores, attention-weighted values, output
projection, MLP, classifier; never all in one path), each of n <= 32 products a_i b_i. Higham's
bound for one sum is n u sum|a_i b_i|, and sum|a_i b_i| <= sqrt(n) max|a| ||b|| <= sqrt(32) * 4 * 1
= 23: every Linear output stays below 4 (asserted by ``_out``) and PyTorch's default init gives
weight rows of l2 norm <= 1 (the scores: 4 products of terms below 4, 4 * 16 = 64, n * 64 = 256
< 32 * 23). In float64 (u = 1.1e-16): 6 * 32 * 23 * 1.1e-16 = 4.9e-13, ``EXACT = 1e-12``. In
float32 (u = 6e-8) the worst case is 2.6e-4, but the rounding errors of independent terms add like
a random walk (Higham 2002, section 2.8: sqrt(n) in place of n), 6 * sqrt(32) * 23 * 6e-8 = 4.7e-5:
``F32 = 5e-5`` (observed: below 3e-7). Every comparison has a counterpart that must fail:
silencing other heads moves the outputs by more than 1e-3.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nbhelpers.core import transformer as tr
from nbhelpers.core.params import ParameterError
from nbhelpers.techniques import neuron_pruning as npr

EXACT, F32 = 1e-12, 5e-5
E, H, D = 16, 4, 4  # model width, heads, head width
X = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(1))  # (batch, tokens, features)
Y = torch.randint(0, 3, (3, 6), generator=torch.Generator().manual_seed(2))


class SeparateAttn(nn.Module):
    """Causal attention with q_proj/k_proj/v_proj/out_proj and a num_heads attribute."""

    def __init__(self, width: int = E, heads: int = H):
        super().__init__()
        self.num_heads, self.head_dim = heads, width // heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(width, width) for _ in range(3))
        self.out_proj = nn.Linear(width, width)

    def split(self, z: torch.Tensor) -> torch.Tensor:
        return z.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (self.split(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class FusedAttn(SeparateAttn):
    """One fused qkv Linear (q, then k, then v) and c_proj, with n_head (nanoGPT's names)."""

    def __init__(self, width: int = E, heads: int = H):
        nn.Module.__init__(self)
        self.n_head, self.head_dim = heads, width // heads
        self.c_attn, self.c_proj = nn.Linear(width, 3 * width), nn.Linear(width, width)

    def split(self, z: torch.Tensor) -> torch.Tensor:
        return z.unflatten(-1, (self.n_head, self.head_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (self.split(z) for z in self.c_attn(x).chunk(3, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).flatten(2))


class Undeclared(SeparateAttn):
    """No head-count attribute: its forward takes the count from the width (-1)."""

    def __init__(self):
        super().__init__()
        del self.num_heads

    def split(self, z: torch.Tensor) -> torch.Tensor:
        return z.unflatten(-1, (-1, self.head_dim)).transpose(1, 2)


class NanoGPTAttn(FusedAttn):
    """nanoGPT's forward: q/k/v split at the model width, heads of width C // n_head."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class InterleavedAttn(FusedAttn):
    """A fused qkv whose outputs are per head (q_h, k_h, v_h): not the supported order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.c_attn(x).unflatten(-1, (self.n_head, 3, self.head_dim)).transpose(1, 2)
        y = F.scaled_dot_product_attention(*z.unbind(-2), is_causal=True)
        return self.c_proj(y.transpose(1, 2).flatten(2))


class BertLike(nn.Module):
    """query/key/value with num_attention_heads and no output projection (BERT's split)."""

    def __init__(self):
        super().__init__()
        self.num_attention_heads = H
        self.query, self.key, self.value = (nn.Linear(E, E) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = lambda z: z.unflatten(-1, (H, D)).transpose(1, 2)  # noqa: E731
        y = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)),
                                           split(self.value(x)))  # fmt: skip
        return y.transpose(1, 2).flatten(2)


class GroupedQuery(SeparateAttn):
    """k and v narrower than q (grouped-query attention)."""

    def __init__(self):
        super().__init__()
        self.k_proj, self.v_proj = nn.Linear(E, E // 2), nn.Linear(E, E // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.split(self.q_proj(x))
        k, v = (p(x).unflatten(-1, (H // 2, D)).transpose(1, 2).repeat_interleave(2, dim=1)
                for p in (self.k_proj, self.v_proj))  # fmt: skip
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(y.transpose(1, 2).flatten(2))


class MHA(nn.Module):
    """nn.MultiheadAttention as a user writes it (batch-first input to the model either way)."""

    def __init__(self, batch_first: bool):
        super().__init__()
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(E, H, batch_first=batch_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.batch_first else x.transpose(0, 1)
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], dtype=x.dtype)
        y = self.attn(h, h, h, attn_mask=mask)[0]  # need_weights: the weights path
        return y if self.batch_first else y.transpose(0, 1)


class Net(nn.Module):
    """emb -> two residual blocks (attention, MLP) -> classifier, per token."""

    def __init__(self, attn):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Linear(5, E)
        self.attn0, self.attn1 = attn(), attn()
        self.fc1, self.fc2, self.head = nn.Linear(E, 32), nn.Linear(32, E), nn.Linear(E, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        h = h + self.attn0(h)
        h = h + self.attn1(h)
        return self.head(h + self.fc2(torch.relu(self.fc1(h))))


SUPPORTED = {
    "mha-batch-first": lambda: MHA(True),
    "mha-seq-first": lambda: MHA(False),
    "separate": SeparateAttn,
    "fused": FusedAttn,
}


def _net(kind: str) -> Net:
    return Net(SUPPORTED[kind]).eval()


def _out(model: nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    """The model's output, every Linear output checked below 4 (the tolerances' derivation)."""
    sizes: list[float] = []
    hooks = [m.register_forward_hook(lambda m, a, o: sizes.append(float(o.abs().max())))
             for m in model.modules() if isinstance(m, nn.Linear)]  # fmt: skip
    with torch.no_grad():
        y = model(x)
    for h in hooks:
        h.remove()
    assert max(sizes) < 4
    return y


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _sites(model: nn.Module) -> list[str]:
    """The attention modules' names: attn0, attn1 (attn0.attn, attn1.attn for the MHA wrapper)."""
    return npr.attention_modules(model).index.tolist()


@pytest.mark.parametrize("kind", list(SUPPORTED))
def test_cut_heads_compute_the_model_with_those_heads_silenced(kind):
    m = _net(kind)
    a0, a1 = _sites(m)
    removal = {a0: [1, 3], a1: [0]}
    cut = npr.prune_attention_heads(m, removal)
    silenced = npr.silence_attention_heads(m, removal)
    got, ref = _out(cut), _out(silenced)
    assert got.shape == _out(m).shape == (3, 6, 3)
    assert (got - ref).abs().max() <= F32
    wrong = _out(npr.silence_attention_heads(m, {a0: [0, 3], a1: [0]}))
    assert (got - wrong).abs().max() > 1e-3  # another head silenced: another function
    assert (got - _out(m)).abs().max() > 1e-3  # silencing changes the model
    x64 = X.double()
    exact = _out(cut.double(), x64) - _out(silenced.double(), x64)
    assert exact.abs().max() <= EXACT
    # physically smaller: per head, q, k, v rows with biases and the output projection's columns
    assert _params(m) - _params(cut) == 3 * (3 * D * (E + 1) + D * E)
    assert npr.attention_modules(cut).heads.tolist() == [2, 3]
    assert _params(m) == _params(_net(kind))  # the original is untouched


@pytest.mark.parametrize("batch_first", [True, False])
def test_pruned_mha_keeps_nn_multiheadattention_call_and_outputs(batch_first):
    """All heads kept: the function of nn.MultiheadAttention, masks, weights and layouts included;
    two heads cut: the original with those heads' output columns zeroed."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, add_bias_kv=True, kdim=12, vdim=12,
                                batch_first=batch_first).eval()  # fmt: skip
    full = npr.PrunedMultiheadAttention(mha)
    q, kv = torch.randn(2, 5, E), torch.randn(2, 7, 12)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    pad = torch.zeros(2, 7)
    pad[0, -2:] = -torch.inf  # a float mask, as the per-head one (mixed types are deprecated)
    per_head = torch.randn(2 * H, 5, 7)
    calls = [{}, {"need_weights": False}, {"key_padding_mask": pad, "attn_mask": per_head},
             {"attn_mask": per_head, "need_weights": False, "average_attn_weights": False},
             {"attn_mask": torch.ones(5, 7, dtype=torch.bool).triu(1), "need_weights": False},
             {"attn_mask": torch.ones(5, 7, dtype=torch.bool).triu(1), "is_causal": True,
              "need_weights": False}]  # fmt: skip
    for kw in calls:
        ref, got = mha(q, kv, kv, **kw), full(q, kv, kv, **kw)
        assert (ref[0] - got[0]).abs().max() <= F32
        assert (ref[1] is None and got[1] is None) or (ref[1] - got[1]).abs().max() <= F32
    cut = npr.PrunedMultiheadAttention(mha).keep([0, 2])
    silenced = npr.silence_attention_heads(mha, {"": [1, 3]})
    kw = {"attn_mask": per_head, "need_weights": False}
    assert (cut(q, kv, kv, **kw)[0] - silenced(q, kv, kv, **kw)[0]).abs().max() <= F32
    assert cut.num_heads == 2 and cut.kept_heads == (0, 2) and cut.bias_k.shape == (1, 1, 2 * D)
    assert cut(q.select(int(not batch_first), 0), kv.select(int(not batch_first), 0),
               kv.select(int(not batch_first), 0))[0].shape == (5, E)  # fmt: skip


def test_prune_channels_cuts_heads_and_the_mlp_of_an_mha_model():
    m = _net("mha-batch-first")
    pruned, table = npr.prune_channels(m, X, 0.5)
    heads = table[table.unit == "head"]
    assert heads.index.tolist() == ["attn0.attn", "attn1.attn"]
    assert heads["units after"].sum() == 4 and heads["units after"].min() >= 1  # a global rank
    # by default only the layers whose channels stay out of the attention and classifier: fc1
    assert table.loc[table.named & (table.unit == "channel")].index.tolist() == ["fc1"]
    assert table.loc["fc1", "units after"] == 16 and table.loc["emb", "units after"] == E
    new = pruned.attn0.attn
    assert isinstance(new, npr.PrunedMultiheadAttention)
    assert new.num_heads == heads.loc["attn0.attn", "units after"] == len(new.kept_heads)
    assert _out(pruned).shape == (3, 6, 3) and _params(pruned) < _params(m)
    with pytest.raises(ValueError, match=r"coupled to the attention projections"):
        npr.prune_channels(m, X, 0.5, ["fc2"])  # fc2 writes the residual stream
    only_heads, t = npr.prune_channels(m, X, 0.25, [])
    assert not t[t.unit == "channel"].cut.any() and t[t.unit == "head"]["units after"].sum() == 6


def test_weight_norm_score_removes_the_smallest_heads_with_or_without_data():
    m = _net("separate")
    with torch.no_grad():
        for a, small in ((m.attn0, 2), (m.attn1, 1)):
            for p in (a.q_proj, a.k_proj, a.v_proj):
                p.weight[small * D : (small + 1) * D] *= 1e-3
            a.out_proj.weight[:, small * D : (small + 1) * D] *= 1e-3
    scores = npr.attention_head_scores(m, criterion="l2")
    w = torch.cat([m.attn0.q_proj.weight[:D], m.attn0.k_proj.weight[:D],
                   m.attn0.v_proj.weight[:D], m.attn0.out_proj.weight[:, :D].T])  # fmt: skip
    assert scores.importance[0] == pytest.approx(float(w.detach().double().norm()), rel=1e-12)
    _, table = npr.prune_channels(m, X, 0.25, [], criterion="l2")
    assert table.loc[["attn0", "attn1"], "units after"].tolist() == [3, 3]
    pruned = npr.prune_attention_heads(m, {"attn0": [2], "attn1": [1]})
    again, _ = npr.prune_channels(m, X, 0.25, [], criterion="l1")
    assert torch.equal(_out(again), _out(pruned))  # exactly the two small heads went


def test_gradient_score_is_michel_et_al_and_matches_the_char_transformer_helper():
    torch.manual_seed(0)
    cm = tr.CharTransformer(vocab_size=20, context=16, width=32, depth=2, heads=4).eval()
    ids = torch.randint(0, 20, (4, 17), generator=torch.Generator().manual_seed(3))
    x, y = ids[:, :-1], ids[:, 1:]
    ref = npr.head_importance(cm, x, y, batch_size=2)
    got = npr.attention_head_scores(cm, data=[(x[:2], y[:2]), (x[2:], y[2:])])
    assert got.module.unique().tolist() == ["blocks.0.attn", "blocks.1.attn"]
    assert torch.equal(torch.tensor(got.importance.values), torch.tensor(ref.importance.values))
    pruned, table = npr.prune_channels(cm, x, 0.25, [], data=[(x, y)])
    chosen = npr.select_removal(npr.head_importance(cm, x, y, batch_size=4), 0.25, "head")
    by_helper = npr.prune_heads(cm, chosen)  # the project's own surgery: the same model
    assert torch.equal(_out(pruned, x), _out(by_helper, x))
    assert npr.structure(pruned).heads.sum() == 6 and table.loc["blocks.0.attn", "cut"]
    assert npr.gate_difference(cm, pruned, chosen, None, x) < F32


def test_a_declared_head_count_and_a_transformer_encoder():
    m = Net(Undeclared).eval()
    assert npr.attention_modules(m).layout.tolist() == ["refused"] * 2  # no count of its own
    decl = {"attn0": H, "attn1": H}
    assert npr.attention_modules(m, decl).layout.tolist() == ["separate"] * 2
    cut = npr.prune_attention_heads(m, {"attn0": [0, 1], "attn1": [3]}, heads=decl)
    assert cut.attn0.q_proj.out_features == 2 * D and cut.attn1.v_proj.out_features == 3 * D
    silenced = npr.silence_attention_heads(m, {"attn0": [0, 1], "attn1": [3]}, heads=decl)
    assert (_out(cut) - _out(silenced)).abs().max() <= F32
    _, table = npr.prune_channels(m, X, 0.5, [], heads=decl)
    assert table.loc[["attn0", "attn1"], "units after"].sum() == 4
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, 32, dropout=0.0, batch_first=True)
    enc = nn.Sequential(nn.Linear(5, E), nn.TransformerEncoder(layer, 2), nn.Linear(E, 3)).eval()
    cut, t = npr.prune_channels(enc, X, 0.5)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[:, -1] = True  # the padding mask takes the encoder's nested-tensor path when it can
    with torch.no_grad():
        h = cut[1](cut[0](X), src_key_padding_mask=pad)
    assert h.shape == (3, 6, E) and t[t.unit == "head"]["units after"].tolist() == [2, 2]


@pytest.mark.parametrize(
    ("attn", "message"),
    [
        (BertLike, r"'attn0' \(BertLike\).*no output projection.*Supported: nn.MultiheadAttention"),
        (GroupedQuery, r"'attn0' \(GroupedQuery\).*grouped-query"),
        (NanoGPTAttn, r"attention module 'attn0' fails.*head-count attribute"),
        (InterleavedAttn, r"attention module 'attn0' computes another function"),
    ],
)
def test_an_unsupported_attention_is_refused_by_name(attn, message):
    m = Net(attn).eval()
    with pytest.raises(ValueError, match=message):
        npr.prune_channels(m, X, 0.5)
    if attn in (BertLike, GroupedQuery):  # HEAD_FRACTION=0: the channels alone
        _, table = npr.prune_channels(m, X, 0.5, ["fc1"], head_fraction=0.0)
        assert table.loc["fc1", "units after"] == 16 and "head" not in set(table.unit)


def test_bad_arguments_name_the_parameter():
    m, res = _net("separate"), nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    cases = [
        ("HEAD_FRACTION", lambda: npr.prune_channels(m, X, 0.5, head_fraction=-0.1)),
        ("HEAD_FRACTION", lambda: npr.prune_channels(m, X, 0.5, head_fraction=1.0)),
        ("HEAD_FRACTION", lambda: npr.prune_channels(m, X, 0.5, head_fraction=0.9)),  # 7 of 8
        ("PRUNE_FRACTION", lambda: npr.prune_channels(m, X, 0.9)),  # the default: every head
        ("PRUNE_FRACTION", lambda: npr.prune_channels(m, X, 0.0)),
        ("HEAD_FRACTION", lambda: npr.prune_channels(res, X, 0.5, head_fraction=0.5)),
        ("HEADS", lambda: npr.prune_channels(m, X, 0.5, heads={"nope": 4})),
        ("HEADS", lambda: npr.prune_channels(m, X, 0.5, heads={"attn0": 0})),
        ("HEADS", lambda: npr.prune_channels(m, X, 0.5, heads={"attn0": 2})),  # not its num_heads
        ("HEADS", lambda: npr.prune_channels(m, X, 0.5, heads={"fc1": 2})),
        ("HEADS", lambda: npr.prune_channels(m, X, 0.5, heads=[("attn0", 4)])),
        ("LAYERS", lambda: npr.prune_channels(m, X, 0.5, ["attn0.q_proj"])),
        ("CRITERION", lambda: npr.prune_channels(m, X, 0.5, criterion="taylor")),
        ("LOSS_FN", lambda: npr.prune_channels(m, X, 0.5, data=[(X, Y)], loss_fn="ce")),
        ("data", lambda: npr.prune_channels(m, X, 0.5, data=[])),
        ("data", lambda: npr.prune_channels(m, X, 0.5, data=[X])),
        ("heads_to_remove", lambda: npr.prune_attention_heads(m, {"attn0": [0, 1, 2, 3]})),
        ("heads_to_remove", lambda: npr.prune_attention_heads(m, {"attn0": [4]})),
        ("heads_to_remove", lambda: npr.prune_attention_heads(m, {"attn9": [0]})),
    ]
    for name, call in cases:
        with pytest.raises(ParameterError) as e:
            call()
        assert e.value.name == name, (name, e.value)
