"""Structured pruning of a transformer: whole attention heads and MLP hidden units, scored by the
gradient of a gate and cut out, so the model is physically smaller.

**Gates.** ``gated`` multiplies each head's output (before the block's output projection) and each
MLP hidden unit's activation (after the GELU, before the second ``Linear``) by a gate variable,
all ones: the model's numbers are unchanged, and the gradient of the loss with respect to a gate
says how much the loss would move if that head or unit were scaled down. The gates are forward
pre-hooks on ``attn.proj`` and ``mlp.proj``; nothing in the model changes, and the hooks are gone
when the ``with`` block ends.

**Head importance** (``head_importance``) is Michel, Levy and Neubig (2019, "Are sixteen heads
really better than one?", NeurIPS, eq. 2): I_h = E_x |dL(x)/d xi_h|, the mean over batches of
windows of the absolute gradient of the batch's mean next-character loss (nats) with respect to the
gate xi_h of head h (as their code does, per batch; ``batch_size=1`` is the per-window
expectation). As the paper does (section 4.1, after Molchanov et al. 2017) the scores are then
normalized per layer by their l2 norm, column ``normalized``, so a global ranking does not favour
the layers whose gradients are larger; ``importance`` keeps the raw mean.

The gates of any model's Linear inputs are ``gate_gradients``: ``_gate_scores`` uses it here,
``attention.attention_head_scores`` for the attention modules of any model.

**MLP unit importance** (``mlp_unit_importance``) is the same gate score applied to hidden units:
for a gate on the activation a, dL/d xi = sum over positions of a * dL/da, so |dL/d xi| is
the first-order Taylor criterion of Molchanov, Tyree, Karras, Aila and Kautz (2017, "Pruning
convolutional neural networks for resource efficient inference", ICLR): the estimated change of
the loss when the unit is removed. Normalized per layer by the l2 norm as well.

**Surgery.** ``prune_heads`` keeps, of the fused ``qkv`` ``Linear``, the q, k and v rows of the
kept heads and, of the output projection, their input columns, and lowers the attention's
``heads``; ``prune_mlp_units`` keeps the kept units' rows of ``mlp.fc`` and columns of
``mlp.proj``. Both return a new model (a deep copy). Removing a head is the same function as
closing its gate, up to float32 summation order (``gate_difference``; tests/test_heads.py).
``select_removal`` picks the lowest-scored heads or units over all blocks (a global ranking),
never every head or unit of a block. The models are ``core.transformer.CharTransformer`` or any
module whose blocks hold a ``CausalSelfAttention`` as ``attn`` and an ``MLP`` as ``mlp``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from nbhelpers.core.params import ParameterError, check_float, check_int
from nbhelpers.core.transformer import MLP, CausalSelfAttention
from nbhelpers.techniques.neuron_pruning.units import n_removed

#: The kinds of structure ``select_removal`` and the gates know: a head of a block's attention, a
#: hidden unit of a block's MLP.
KINDS = ("head", "unit")


def attention_layers(model: nn.Module) -> list[CausalSelfAttention]:
    """The model's ``CausalSelfAttention`` modules in order: block i's is element i."""
    return [m for m in model.modules() if isinstance(m, CausalSelfAttention)]


def mlp_layers(model: nn.Module) -> list[MLP]:
    """The model's ``MLP`` modules in order: block i's is element i."""
    return [m for m in model.modules() if isinstance(m, MLP)]


def structure(model: nn.Module) -> pd.DataFrame:
    """The prunable shape of each block: heads, channels per head, MLP hidden units.

    Args:
        model: a ``CharTransformer`` (pruned or not).

    Returns:
        One row per block: ``block``, ``heads``, ``head_dim``, ``mlp_units``.
    """
    attn, mlp = attention_layers(model), mlp_layers(model)
    return pd.DataFrame(
        [{"block": i, "heads": a.heads, "head_dim": a.head_dim, "mlp_units": m.fc.out_features}
         for i, (a, m) in enumerate(zip(attn, mlp, strict=True))]
    )  # fmt: skip


def _ones(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Open gates: ones for every head and every MLP unit of each block, on the model's device."""
    dev = next(model.parameters()).device
    return ([torch.ones(a.heads, device=dev) for a in attention_layers(model)],
            [torch.ones(m.fc.out_features, device=dev) for m in mlp_layers(model)])  # fmt: skip


def _gate_hook(gate: torch.Tensor, width: int):
    """A pre-hook multiplying the last dimension of a Linear's input, viewed as (gates, width)."""

    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        shaped = x.unflatten(-1, (len(gate), width)) * gate.to(x.dtype).unsqueeze(-1)
        return (shaped.flatten(-2), *args[1:])

    return hook


@contextlib.contextmanager
def gated(
    model: nn.Module,
    head_gates: Sequence[torch.Tensor] | None = None,
    unit_gates: Sequence[torch.Tensor] | None = None,
) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Run a model with a gate on every head's output and every MLP unit's activation.

    Args:
        model: a ``CharTransformer``.
        head_gates: one tensor of ``heads`` gates per block (None: ones on the model's device).
        unit_gates: one tensor of ``mlp_units`` gates per block (None: ones).

    Yields:
        (head gates, unit gates): the tensors in use; make them require gradients to score.
    """
    attn, mlp = attention_layers(model), mlp_layers(model)
    ones = _ones(model)
    hg = ones[0] if head_gates is None else list(head_gates)
    ug = ones[1] if unit_gates is None else list(unit_gates)
    for name, gates, sizes in (("head_gates", hg, [a.heads for a in attn]),
                               ("unit_gates", ug, [m.fc.out_features for m in mlp])):  # fmt: skip
        if [tuple(g.shape) for g in gates] != [(n,) for n in sizes]:
            raise ParameterError(name, [tuple(g.shape) for g in gates], f"one 1-D gate per "
                                 f"block of sizes {sizes}")  # fmt: skip
    handles = [a.proj.register_forward_pre_hook(_gate_hook(g, a.head_dim))
               for a, g in zip(attn, hg)]  # fmt: skip
    handles += [m.proj.register_forward_pre_hook(_gate_hook(g, 1)) for m, g in zip(mlp, ug)]
    try:
        yield hg, ug
    finally:
        for h in handles:
            h.remove()


def gate_gradients(
    model: nn.Module,
    points: Sequence[tuple[nn.Linear, int, int]],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[object, torch.Tensor], torch.Tensor],
) -> list[torch.Tensor]:
    """Mean over batches of |dL/d gate| for gates, all ones, on the inputs of Linear layers.

    The gates are forward pre-hooks (``_gate_hook``): a point ``(layer, n, width)`` puts ``n``
    gates on ``layer``'s input, gate g multiplying input channels ``g * width : (g + 1) * width``
    (the heads' outputs before an output projection, or ``width = 1``: single units). The model
    runs in eval mode (restored after), its weights and ``.grad`` are left as found.

    Args:
        model: any model whose forward calls each point's layer once.
        points: (layer, gates, channels per gate) triples.
        batches: (inputs, targets) pairs, moved to the model's device.
        loss_fn: ``loss_fn(model(inputs), targets)``, a scalar (the batch's mean loss).

    Returns:
        One float64 CPU tensor of mean absolute gradients per point.

    Raises:
        ParameterError: ``batches`` is empty or not pairs of tensors.
        ValueError: a point's layer is not on the path to the loss.
    """
    p = next(model.parameters())
    dev, dtype, was_training = p.device, torch.promote_types(p.dtype, torch.float32), model.training
    acc = [torch.zeros(n, dtype=torch.float64) for _, n, _ in points]  # on the CPU, in float64
    count = 0
    model.eval()
    try:
        for batch in batches:
            if not (isinstance(batch, Sequence) and len(batch) == 2
                    and all(isinstance(t, torch.Tensor) for t in batch)):  # fmt: skip
                raise ParameterError("data", type(batch).__name__, "(inputs, targets) tensor pairs")
            gates = [torch.ones(n, device=dev, dtype=dtype, requires_grad=True)
                     for _, n, _ in points]  # fmt: skip
            handles = [layer.register_forward_pre_hook(_gate_hook(g, w))
                       for (layer, _, w), g in zip(points, gates)]  # fmt: skip
            try:
                loss = loss_fn(model(batch[0].to(dev)), batch[1].to(dev))
            finally:
                for h in handles:
                    h.remove()
            grads = torch.autograd.grad(loss, gates, allow_unused=True)
            if any(g is None for g in grads):
                raise ValueError("a gated layer is not on the path from the inputs to the loss")
            for a, g in zip(acc, grads):
                a += g.detach().abs().cpu().double()
            count += 1
    finally:
        model.train(was_training)
    if not count:
        raise ParameterError("data", "no batch", "at least one (inputs, targets) batch")
    return [a / count for a in acc]


def _lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-character cross-entropy (nats) of (batch, tokens, vocab) logits, in float32 at
    least."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits.flatten(0, -2), y.flatten())


def _gate_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple:
    """Mean over batches of |dL/d gate| for every head and unit gate (model in eval mode)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.numel() == 0:
        raise ParameterError("x", tuple(getattr(x, "shape", ())), "a (windows, context) tensor")
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        raise ParameterError("y", tuple(getattr(y, "shape", ())), f"x's shape {tuple(x.shape)}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    attn = attention_layers(model)
    points = [(a.proj, a.heads, a.head_dim) for a in attn]
    points += [(m.proj, m.fc.out_features, 1) for m in mlp_layers(model)]
    batches = ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size))
    scores = gate_gradients(model, points, batches, _lm_loss)
    return scores[: len(attn)], scores[len(attn) :]


def score_table(scores: Sequence[torch.Tensor], kind: str) -> pd.DataFrame:
    """Scores as a table, normalized per block by their l2 norm (Michel et al., section 4.1).

    Args:
        scores: one 1-D tensor per block (attention module or MLP).
        kind: the id column's name, "head" or "unit".

    Returns:
        One row per (block, id): ``block``, ``kind``, ``importance``, ``normalized``.
    """
    rows = []
    for block, s in enumerate(scores):
        norm = s / s.norm().clamp_min(1e-30)
        rows += [{"block": block, kind: j, "importance": float(v), "normalized": float(n)}
                 for j, (v, n) in enumerate(zip(s, norm))]  # fmt: skip
    return pd.DataFrame(rows, columns=["block", kind, "importance", "normalized"])


def head_importance(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 16
) -> pd.DataFrame:
    """Michel et al. (2019) importance of every attention head (see the module's docstring).

    Args:
        model: a ``CharTransformer``; left unchanged (its gradients too), its mode restored.
        x: (windows, context) int64 inputs, e.g. validation windows (``core.text.eval_windows``).
        y: (windows, context) targets, ``x`` shifted by one.
        batch_size: windows per backward pass, at least 1.

    Returns:
        One row per (block, head): ``block``, ``head``, ``importance`` (mean |dL/d gate| over
        batches, L in nats per character) and ``normalized`` (divided by its block's l2 norm).
    """
    return score_table(_gate_scores(model, x, y, batch_size)[0], "head")


def mlp_unit_importance(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 16
) -> pd.DataFrame:
    """First-order Taylor importance (Molchanov et al. 2017) of every MLP hidden unit: the gate
    score of ``head_importance`` applied to each unit (see the module's docstring).

    Args:
        model: a ``CharTransformer``; left unchanged, its mode restored.
        x: (windows, context) int64 inputs.
        y: (windows, context) targets.
        batch_size: windows per backward pass, at least 1.

    Returns:
        One row per (block, unit): ``block``, ``unit``, ``importance``, ``normalized``.
    """
    return score_table(_gate_scores(model, x, y, batch_size)[1], "unit")


def check_structured_fraction(name: str, fraction: object, sizes: Sequence[int]) -> float:
    """Check a fraction of heads (or units) to remove over all blocks: in [0, 1), and small enough
    that a global removal can leave every block one.

    Args:
        name: parameter name, e.g. "HEAD_PRUNE_FRACTION".
        fraction: the given value.
        sizes: heads (or units) per block.

    Returns:
        The fraction as a float.
    """
    f = check_float(name, fraction, 0.0, 1.0, high_inclusive=False)
    total, most = sum(sizes), sum(n - 1 for n in sizes)
    if n_removed(total, f) > most:
        raise ParameterError(name, fraction, f"a fraction in [0, 1) removing at most {most} of "
                             f"{total} (each of the {len(sizes)} blocks keeps one)")  # fmt: skip
    return f


def select_removal(
    scores: pd.DataFrame, fraction: float, kind: str = "head", column: str = "normalized"
) -> dict[int, list[int]]:
    """The lowest-scored ``fraction`` of heads (or units) over all blocks, each block keeping one.

    ``n_removed(total, fraction)`` go, lowest ``column`` first (ties: lower block, then index);
    one whose removal would empty its block is passed over for the next.

    Args:
        scores: ``head_importance`` or ``mlp_unit_importance``.
        fraction: in [0, 1) (``check_structured_fraction``).
        kind: "head" or "unit", the id column of ``scores``.
        column: the score to rank by ("normalized", as the paper, or "importance").

    Returns:
        {block: sorted indices to remove}, every block present (empty lists where none go).
    """
    if kind not in KINDS or kind not in scores.columns or column not in scores.columns:
        raise ParameterError("kind", kind, f"one of {KINDS} naming a column of scores with "
                             f"{column!r}")  # fmt: skip
    sizes = scores.groupby("block")[kind].count()
    f = check_structured_fraction("fraction", fraction, list(sizes))
    n = n_removed(len(scores), f)
    left = sizes.to_dict()
    out: dict[int, list[int]] = {int(b): [] for b in sizes.index}
    for r in scores.sort_values([column, "block", kind], kind="stable").itertuples():
        if n == 0:
            break
        b = int(r.block)
        if left[b] > 1:
            out[b].append(int(getattr(r, kind)))
            left[b], n = left[b] - 1, n - 1
    return {b: sorted(v) for b, v in out.items()}


def _check_removal(name: str, removal: object, sizes: Sequence[int], what: str) -> dict:
    """Check {block: indices}: known blocks, distinct known indices, never a whole block."""
    if not isinstance(removal, Mapping):
        raise ParameterError(name, removal, f"a dict block -> list of {what} indices")
    out = {}
    for b, idx in removal.items():
        if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < len(sizes):
            raise ParameterError(name, removal, f"blocks 0..{len(sizes) - 1} (block {b!r})")
        idx = list(idx)
        n = sizes[b]
        if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n for i in idx):
            raise ParameterError(name, removal, f"{what} indices 0..{n - 1} in block {b}")
        if len(set(idx)) != len(idx) or len(idx) >= n:
            raise ParameterError(name, removal, f"distinct {what}s, at most {n - 1} of block "
                                 f"{b}'s {n} (each block keeps one)")  # fmt: skip
        out[b] = sorted(idx)
    return out


def slice_linear(
    layer: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None
) -> nn.Linear:
    """A new ``nn.Linear`` holding the given output rows and input columns of ``layer``.

    Args:
        layer: the layer (left unchanged).
        rows: indices of the output rows (and bias entries) kept, None for all.
        cols: indices of the input columns kept, None for all.

    Returns:
        The new layer, on the layer's device and dtype, its weight's ``requires_grad`` kept.
    """
    w = layer.weight.detach()
    w = w if rows is None else w[rows]
    w = w if cols is None else w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=layer.bias is not None,
                    device=w.device, dtype=w.dtype)  # fmt: skip
    with torch.no_grad():
        new.weight.copy_(w)
        if layer.bias is not None:
            new.bias.copy_(layer.bias.detach() if rows is None else layer.bias.detach()[rows])
    new.weight.requires_grad_(layer.weight.requires_grad)
    return new


def prune_heads(model: nn.Module, heads_to_remove: Mapping[int, Sequence[int]]) -> nn.Module:
    """A copy of the model without the given attention heads (see the module's docstring).

    Args:
        model: a ``CharTransformer`` (pruned before or not); left unchanged.
        heads_to_remove: {block: head indices}; blocks not named keep every head.

    Returns:
        The smaller model (a deep copy): each named block's ``qkv`` has ``3 * kept * head_dim``
        outputs, its ``proj`` ``kept * head_dim`` inputs and its ``heads`` is ``kept``.
    """
    attn = attention_layers(model)
    removal = _check_removal("heads_to_remove", heads_to_remove, [a.heads for a in attn], "head")
    new = copy.deepcopy(model)
    for b, a in enumerate(attention_layers(new)):
        if not removal.get(b):
            continue
        d, inner = a.head_dim, a.heads * a.head_dim
        keep = [h for h in range(a.heads) if h not in removal[b]]
        chans = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep])
        rows = torch.cat([part * inner + chans for part in range(3)])
        a.qkv = slice_linear(a.qkv, rows.to(a.qkv.weight.device), None)
        a.proj = slice_linear(a.proj, None, chans.to(a.proj.weight.device))
        a.heads = len(keep)
    return new


def prune_mlp_units(model: nn.Module, units_to_remove: Mapping[int, Sequence[int]]) -> nn.Module:
    """A copy of the model without the given MLP hidden units (see the module's docstring).

    Args:
        model: a ``CharTransformer`` (pruned before or not); left unchanged.
        units_to_remove: {block: unit indices}; blocks not named keep every unit.

    Returns:
        The smaller model (a deep copy): each named block's ``mlp.fc`` keeps the kept units' rows
        and ``mlp.proj`` their columns.
    """
    mlp = mlp_layers(model)
    sizes = [m.fc.out_features for m in mlp]
    removal = _check_removal("units_to_remove", units_to_remove, sizes, "unit")
    new = copy.deepcopy(model)
    for b, m in enumerate(mlp_layers(new)):
        if not removal.get(b):
            continue
        drop = set(removal[b])
        keep = [u for u in range(sizes[b]) if u not in drop]
        keep = torch.tensor(keep, device=m.fc.weight.device)
        m.fc, m.proj = slice_linear(m.fc, keep, None), slice_linear(m.proj, None, keep)
    return new


def closed_gates(
    model: nn.Module,
    heads_to_remove: Mapping[int, Sequence[int]] | None = None,
    units_to_remove: Mapping[int, Sequence[int]] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Gates for ``gated``: ones, with a 0 for each head and unit to remove.

    Args:
        model: the unpruned model the indices refer to.
        heads_to_remove: {block: head indices} (None: none).
        units_to_remove: {block: unit indices} (None: none).

    Returns:
        (head gates, unit gates), on the model's device.
    """
    hg, ug = _ones(model)
    for gates, removal in ((hg, heads_to_remove), (ug, units_to_remove)):
        for b, idx in (removal or {}).items():
            gates[b][list(idx)] = 0.0
    return hg, ug


@torch.no_grad()
def gate_difference(
    model: nn.Module,
    pruned: nn.Module,
    heads_to_remove: Mapping[int, Sequence[int]] | None,
    units_to_remove: Mapping[int, Sequence[int]] | None,
    x: torch.Tensor,
) -> float:
    """The largest |logit difference| between a pruned model and the unpruned one with the removed
    heads' and units' gates closed: float32 rounding when the surgery is right.

    Args:
        model: the unpruned model.
        pruned: ``prune_heads``/``prune_mlp_units`` of it with the same indices, not trained.
        heads_to_remove: the heads removed.
        units_to_remove: the units removed.
        x: (batch, tokens) inputs.

    Returns:
        max |pruned(x) - gated model(x)|.
    """
    modes = model.training, pruned.training
    model.eval(), pruned.eval()
    try:
        with gated(model, *closed_gates(model, heads_to_remove, units_to_remove)):
            ref = model(x.to(next(model.parameters()).device)).cpu()
        out = pruned(x.to(next(pruned.parameters()).device)).cpu()
    finally:
        model.train(modes[0]), pruned.train(modes[1])
    return float((out - ref).abs().max())
