"""nbhelpers.techniques.neuron_pruning.heads: gate scores of heads and MLP units, the surgery that
removes them (exact parameter counts, the same function as closed gates), the global selection and
bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nbhelpers.core import transformer as tr
from nbhelpers.core.params import ParameterError
from nbhelpers.techniques import neuron_pruning as npr

VOCAB = 20
WIDTH, DEPTH, HEADS, HIDDEN = 32, 3, 4, 128  # head_dim 8


def _model(**kw) -> tr.CharTransformer:
    torch.manual_seed(0)
    cfg = dict(vocab_size=VOCAB, context=16, width=WIDTH, depth=DEPTH, heads=HEADS)
    return tr.CharTransformer(**{**cfg, **kw}).eval()


def _windows(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (n, 17), generator=torch.Generator().manual_seed(seed))
    return ids[:, :-1], ids[:, 1:]


def test_open_gates_leave_the_model_unchanged_and_closed_ones_change_it():
    m, (x, _) = _model(), _windows()
    ref = m(x)
    with npr.gated(m) as (hg, ug):
        assert [g.shape for g in hg] == [(HEADS,)] * DEPTH
        assert [g.shape for g in ug] == [(HIDDEN,)] * DEPTH
        assert torch.equal(m(x), ref)
    closed = npr.closed_gates(m, {1: [2]}, None)
    with npr.gated(m, *closed):
        assert not torch.allclose(m(x), ref, atol=1e-4)
    assert torch.equal(m(x), ref)  # the hooks are gone


def test_importance_has_a_row_per_head_and_unit_non_negative_unit_norm_per_block():
    m, (x, y) = _model(), _windows()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    heads = npr.head_importance(m, x, y, batch_size=4)
    units = npr.mlp_unit_importance(m, x, y, batch_size=4)
    assert list(heads.columns) == ["block", "head", "importance", "normalized"]
    assert len(heads) == DEPTH * HEADS and len(units) == DEPTH * HIDDEN
    assert heads.groupby("block")["head"].apply(list).tolist() == [list(range(HEADS))] * DEPTH
    for t in (heads, units):
        assert (t.importance >= 0).all() and (t.importance > 0).any()
        norms = t.groupby("block").normalized.apply(lambda s: float((s**2).sum()) ** 0.5)
        assert norms.round(6).tolist() == [1.0] * DEPTH
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(p.grad is None for p in m.parameters()) and not m.training


def test_head_importance_is_the_mean_absolute_gate_gradient_of_each_batch():
    """Written out for one head, in float64: |dL/d xi| by a central difference of its gate, for
    each batch of two windows, averaged."""
    m, (x, y) = _model().double(), _windows(4)
    scores = npr.head_importance(m, x, y, batch_size=2)
    block, head, eps = 2, 1, 1e-5
    grads = []
    for i in (0, 2):
        losses = []
        for delta in (eps, -eps):
            hg, ug = ([g.double() for g in gs] for gs in npr.closed_gates(m))
            hg[block][head] = 1.0 + delta  # in float64: float32 would round the step
            with npr.gated(m, hg, ug), torch.no_grad():
                logits = m(x[i : i + 2]).flatten(0, 1)
                losses.append(float(F.cross_entropy(logits, y[i : i + 2].flatten())))
        grads.append(abs(losses[0] - losses[1]) / (2 * eps))
    row = scores[(scores.block == block) & (scores["head"] == head)].iloc[0]
    assert grads[0] != pytest.approx(grads[1], rel=1e-2)  # two batches, two gradients
    assert row.importance == pytest.approx(sum(grads) / 2, rel=1e-4)


def test_pruned_model_equals_the_gated_model_with_those_gates_closed():
    m, (x, _) = _model(), _windows()
    heads, units = {0: [1, 3], 2: [0]}, {1: list(range(0, 128, 3)), 2: [5]}
    pruned = npr.prune_mlp_units(npr.prune_heads(m, heads), units)
    assert npr.gate_difference(m, pruned, heads, units, x) < 1e-5
    hg, ug = npr.closed_gates(m, heads, units)
    with npr.gated(m, hg, ug):
        ref = m(x)
    assert torch.allclose(pruned(x), ref, atol=1e-5, rtol=0)
    assert not torch.allclose(pruned(x), m(x), atol=1e-4)  # the check can fail
    wrong = npr.prune_heads(m, {0: [0, 3], 2: [0]})  # another head removed: not the same function
    assert npr.gate_difference(m, wrong, heads, None, x) > 1e-4


def test_pruning_removes_exactly_the_parameters_of_the_removed_heads_and_units():
    m = _model()
    d = WIDTH // HEADS
    per_head = 3 * d * (WIDTH + 1) + d * WIDTH  # q, k, v rows with biases; output columns
    per_unit = (WIDTH + 1) + WIDTH  # fc row with bias; proj column
    heads, units = {0: [0], 1: [1, 2, 3]}, {0: [7, 9], 2: list(range(100))}
    pruned = npr.prune_mlp_units(npr.prune_heads(m, heads), units)
    assert tr.parameter_count(m) - tr.parameter_count(pruned) == 4 * per_head + 102 * per_unit
    shape = npr.structure(pruned)
    assert shape.heads.tolist() == [3, 1, 4] and shape.head_dim.tolist() == [d] * 3
    assert shape.mlp_units.tolist() == [126, 128, 28]
    a = pruned.blocks[1].attn
    assert tuple(a.qkv.weight.shape) == (3 * d, WIDTH) and tuple(a.proj.weight.shape) == (WIDTH, d)
    assert tr.parameter_count(m) == tr.parameter_count(_model())  # the original is untouched
    assert pruned.head.weight is pruned.tok_emb.weight  # the copy keeps the tie


def test_a_block_left_with_one_head_runs_trains_and_generates():
    m, (x, y) = _model(), _windows()
    pruned = npr.prune_heads(m, {b: [0, 1, 2] for b in range(DEPTH)})
    assert npr.structure(pruned).heads.tolist() == [1] * DEPTH
    assert npr.gate_difference(m, pruned, {b: [0, 1, 2] for b in range(DEPTH)}, None, x) < 1e-5
    tr.set_attention(pruned, "written_out")
    slow = pruned(x)
    tr.set_attention(pruned, "sdpa")
    assert torch.allclose(slow, pruned(x), atol=1e-5)
    pruned.train()
    loss = F.cross_entropy(pruned(x).flatten(0, 1), y.flatten())
    loss.backward()
    assert all(p.grad is not None for p in pruned.parameters())
    out = tr.generate(pruned, torch.tensor([1, 2]), 30, 1.0, torch.Generator().manual_seed(0))
    assert out.shape == (32,) and int(out.max()) < VOCAB
    again = npr.prune_heads(npr.prune_mlp_units(pruned, {0: [1]}), {})  # prune a pruned model
    assert npr.structure(again).mlp_units.tolist() == [127, 128, 128]


def test_select_removal_ranks_globally_and_keeps_one_per_block():
    m, (x, y) = _model(), _windows()
    scores = npr.head_importance(m, x, y)
    chosen = npr.select_removal(scores, 0.25, "head")
    assert sum(map(len, chosen.values())) == 3 and set(chosen) == {0, 1, 2}
    picked = {(b, h) for b, hs in chosen.items() for h in hs}
    lowest = scores.nsmallest(3, "normalized")
    assert picked == set(zip(lowest.block, lowest["head"]))
    # block 0 scores lowest of all: a global ranking would empty it, the selection keeps one
    rigged = scores.assign(normalized=[0.0] * HEADS + [1.0] * (DEPTH - 1) * HEADS)
    most = npr.select_removal(rigged, 0.5, "head")
    assert most[0] == [0, 1, 2] and sum(map(len, most.values())) == 6
    assert npr.select_removal(scores, 0.0, "head") == {0: [], 1: [], 2: []}
    units = npr.select_removal(npr.mlp_unit_importance(m, x, y), 0.5, "unit")
    assert sum(map(len, units.values())) == 192 and set(units) == {0, 1, 2}


def test_bad_input_is_refused_naming_the_parameter():
    m, (x, y) = _model(), _windows()
    scores = npr.head_importance(m, x, y)
    cases = [
        ("heads_to_remove", lambda: npr.prune_heads(m, {3: [0]})),  # no block 3
        ("heads_to_remove", lambda: npr.prune_heads(m, {0: [4]})),  # no head 4
        ("heads_to_remove", lambda: npr.prune_heads(m, {0: [0, 1, 2, 3]})),  # the whole block
        ("heads_to_remove", lambda: npr.prune_heads(m, {0: [1, 1]})),
        ("heads_to_remove", lambda: npr.prune_heads(m, [[0]])),
        ("units_to_remove", lambda: npr.prune_mlp_units(m, {0: list(range(128))})),
        ("units_to_remove", lambda: npr.prune_mlp_units(m, {-1: [0]})),
        ("fraction", lambda: npr.select_removal(scores, 1.0, "head")),
        ("fraction", lambda: npr.select_removal(scores, 0.8, "head")),  # 10 of 12: a block empties
        ("kind", lambda: npr.select_removal(scores, 0.5, "channel")),
        ("kind", lambda: npr.select_removal(scores, 0.5, "unit")),  # not a column of head scores
        ("HEAD_FRACTION", lambda: npr.check_structured_fraction("HEAD_FRACTION", -0.1, [4, 4])),
        ("batch_size", lambda: npr.head_importance(m, x, y, batch_size=0)),
        ("y", lambda: npr.head_importance(m, x, y[:, :-1])),
        ("head_gates", lambda: npr.gated(m, [torch.ones(3)] * DEPTH).__enter__()),
    ]
    for name, call in cases:
        with pytest.raises(ParameterError) as e:
            call()
        assert e.value.name == name, (name, e.value)
    assert npr.check_structured_fraction("f", 0.75, [4, 4]) == 0.75  # 6 of 8: each block keeps 1


def test_gate_gradients_scores_gates_on_any_linear_input_and_refuses_bad_batches():
    """The generic gate score: on the heads of a CharTransformer, head_importance's numbers; a
    gate on a layer the loss never reaches, and batches that are not pairs, are refused."""
    m, (x, y) = _model(), _windows(4)
    points = [(a.proj, a.heads, a.head_dim) for a in npr.attention_layers(m)]
    loss = lambda out, t: F.cross_entropy(out.flatten(0, 1), t.flatten())  # noqa: E731
    got = npr.gate_gradients(m, points, [(x[:2], y[:2]), (x[2:], y[2:])], loss)
    ref = npr.head_importance(m, x, y, batch_size=2)
    assert torch.equal(torch.cat(got), torch.tensor(ref.importance.values))
    unused = torch.nn.Linear(WIDTH, WIDTH)
    with pytest.raises(ValueError, match="not on the path"):
        npr.gate_gradients(m, [*points, (unused, 4, 8)], [(x, y)], loss)
    for bad in ([], [x], [(x, y, y)]):
        with pytest.raises(ParameterError) as e:
            npr.gate_gradients(m, points, bad, loss)
        assert e.value.name == "data"
