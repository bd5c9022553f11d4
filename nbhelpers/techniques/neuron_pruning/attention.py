"""The attention heads of any model: find its attention modules, score their heads, cut them out.

**What is supported** (``attention_modules`` lists what it finds, supported or not):

* ``nn.MultiheadAttention`` (``batch_first`` or not, packed or separate q/k/v weights,
  ``bias_k``/``bias_v``, ``add_zero_attn``), found by itself. Cut, it becomes a
  ``mha.PrunedMultiheadAttention``: the same call and output shapes, the kept heads' weights;
* a module of one's own that holds ``nn.Linear`` children for the queries, keys and values, either
  separate (named ``q_proj``/``k_proj``/``v_proj``, ``query``/``key``/``value`` or
  ``wq``/``wk``/``wv``) or fused into one (``qkv``, ``qkv_proj``, ``c_attn``, ``in_proj`` or
  ``Wqkv``, whose outputs are all the q, then all the k, then all the v), and an output projection
  (``out_proj``, ``o_proj``, ``proj``, ``c_proj``, ``wo`` or ``out``). Head h of ``n`` is channels
  ``h * d : (h + 1) * d`` of each of q, k and v and of the output projection's input, ``d`` the
  inner width over ``n``. **How its heads are declared:** it is found by itself when it has an
  integer head-count attribute (``HEAD_ATTRS``: ``num_heads``, ``n_head``, ``n_heads``, ``heads``
  or ``num_attention_heads``); ``heads={"module name": count}`` declares the count of a module
  without one (or must agree with it). The cut lowers that attribute, so the module's forward must
  take its shapes from it and a fixed head width (``q.view(b, t, self.num_heads, self.head_dim)``,
  ``y.reshape(b, t, -1)``), never from the model width (nanoGPT's ``split(self.n_embd)`` and
  ``view(B, T, C)`` are not cut-able as written). ``head_cut.cut_heads`` checks this: a forward that
  fails after the cut, or computes another function, is named. The project's
  ``core.transformer.CausalSelfAttention`` (fused ``qkv``, ``proj``, ``heads``) is such a module.

Anything else holding q/k/v projections (grouped-query attention, whose k/v are narrower than its
q; a module without its output projection, as BERT's self-attention) is refused by name.

**Scores** (``attention_head_scores``), higher is kept: with data, the gradient score of Michel et
al. (2019): the mean over batches of |dL/d gate| for a gate on each head's output, the gates on the
output projection's input (``heads.gate_gradients``, the same code as ``heads.head_importance``);
without data, the l1 or l2 norm of the head's weights (its q, k and v rows and its output
projection's columns; biases not counted), or random scores (the control). ``normalized`` divides
each module's scores by their l2 norm, as the paper does before its global ranking.

**Surgery** (``prune_attention_heads``) keeps the kept heads' q/k/v rows (and biases) and output
projection columns; ``silence_attention_heads`` instead zeroes the removed heads' output projection
columns, the function the cut model must compute.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from nbhelpers.core.params import ParameterError, check_choice
from nbhelpers.techniques.neuron_pruning.heads import gate_gradients, score_table, slice_linear
from nbhelpers.techniques.neuron_pruning.mha import PrunedMultiheadAttention

#: Child names read as the separate query, key and value projections, and as a fused one.
Q_NAMES = ("q_proj", "query", "wq")
K_NAMES = ("k_proj", "key", "wk")
V_NAMES = ("v_proj", "value", "wv")
FUSED_NAMES = ("qkv", "qkv_proj", "c_attn", "in_proj", "Wqkv")
#: Child names read as the output projection.
OUT_NAMES = ("out_proj", "o_proj", "proj", "c_proj", "wo", "out")
#: Attributes read as a module's head count (the first integer one); the cut lowers it.
HEAD_ATTRS = ("num_heads", "n_head", "n_heads", "heads", "num_attention_heads")
#: How head importance can be scored without data (with data: the gradient score).
HEAD_CRITERIA = ("l1", "l2", "random")

SUPPORTED = (
    "nn.MultiheadAttention, or a module with nn.Linear children for q, k, v (separate: "
    f"{'/'.join(Q_NAMES[:1] + K_NAMES[:1] + V_NAMES[:1])} or query/key/value or wq/wk/wv; fused: "
    f"one of {', '.join(FUSED_NAMES)}) of equal widths and an output projection (one of "
    f"{', '.join(OUT_NAMES)}), its head count an integer attribute ({', '.join(HEAD_ATTRS)}) "
    "or declared as heads={'<module name>': count}"
)


@dataclass(frozen=True)
class Site:
    """An attention module that can lose heads.

    Attributes:
        name: its name in the model ("" for the model itself).
        kind: "mha" (``nn.MultiheadAttention``), "pruned" (``PrunedMultiheadAttention``),
            "separate" (q/k/v Linear children) or "fused" (one q/k/v Linear child).
        heads: its head count; ``head_dim``: channels per head.
        parts: the q, k, v child names ("separate"), the fused one ("fused"), or ().
        out: the output projection's child name.
        attr: the head-count attribute the cut lowers, or None.
    """

    name: str
    kind: str
    heads: int
    head_dim: int
    parts: tuple[str, ...]
    out: str
    attr: str | None


def _child(module: nn.Module, names: Sequence[str]) -> str | None:
    """The first of ``names`` that is an ``nn.Linear`` child of ``module``."""
    return next((n for n in names if isinstance(getattr(module, n, None), nn.Linear)), None)


def _head_attr(module: nn.Module) -> str | None:
    """The first of ``HEAD_ATTRS`` that is a positive integer attribute of ``module``."""
    for a in HEAD_ATTRS:
        v = getattr(module, a, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return a
    return None


def _layout(module: nn.Module) -> tuple[str, tuple[str, ...], str | None] | None:
    """(kind, parts, output child) of a module holding q/k/v projections; None if it holds none."""
    q, k, v = (_child(module, names) for names in (Q_NAMES, K_NAMES, V_NAMES))
    fused = _child(module, FUSED_NAMES)
    out = _child(module, OUT_NAMES)
    if q and k and v:
        return "separate", (q, k, v), out
    if fused:
        return "fused", (fused,), out
    return None


def _custom_site(name: str, module: nn.Module, declared: int | None) -> Site | str | None:
    """The site of a module of one's own, a reason it cannot be one, or None (no q/k/v)."""
    layout = _layout(module)
    if layout is None:
        return None if declared is None else "it holds no q/k/v projections"
    kind, parts, out = layout
    attr = _head_attr(module)
    n = declared if declared is not None else getattr(module, attr) if attr else None
    if out is None:
        return f"it holds q/k/v projections ({', '.join(parts)}) but no output projection"
    if n is None:
        return "no head count: it has no integer head-count attribute and is not declared"
    if declared is not None and attr and getattr(module, attr) != declared:
        return f"declared with {declared} heads, its {attr} is {getattr(module, attr)}"
    inner = getattr(module, out).in_features
    widths = [getattr(module, p).out_features for p in parts]
    if widths != ([inner] * 3 if kind == "separate" else [3 * inner]):
        return (f"its q/k/v widths {widths} are not those of its output projection's input "
                f"({inner}; grouped-query attention is not supported)")  # fmt: skip
    if inner % n:
        return f"its inner width {inner} is not a multiple of its {n} heads"
    return Site(name, kind, n, inner // n, parts, out, attr)


def _site(name: str, module: nn.Module, declared: int | None) -> Site | str | None:
    """The site of any module, a reason it cannot be one, or None (not attention)."""
    if isinstance(module, nn.MultiheadAttention | PrunedMultiheadAttention):
        kind = "mha" if isinstance(module, nn.MultiheadAttention) else "pruned"
        if declared is not None and declared != module.num_heads:
            return f"declared with {declared} heads, its num_heads is {module.num_heads}"
        return Site(name, kind, module.num_heads, module.head_dim, (), "out_proj", "num_heads")
    return _custom_site(name, module, declared)


def find_sites(
    model: nn.Module, heads: Mapping[str, int] | None = None
) -> tuple[list[Site], dict[str, str]]:
    """The model's attention modules that can lose heads, and those that cannot.

    Args:
        model: any model.
        heads: {module name: head count} for modules of one's own without a head-count
            attribute (see the module's docstring); None: none declared.

    Returns:
        (sites in ``named_modules`` order, {name: why it cannot be cut} for the modules that
        hold q/k/v projections but are not supported).

    Raises:
        ParameterError: ``heads`` names a module that is not there, a count that is not a
            positive integer, or a module that is not a supported attention.
    """
    if heads is not None and not isinstance(heads, Mapping):
        raise ParameterError("HEADS", heads, "a dict {attention module name: head count}")
    declared = dict(heads or {})
    modules = dict(model.named_modules())
    for n, c in declared.items():
        if n not in modules or isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ParameterError("HEADS", heads, "{module name: positive head count} of modules "
                                 f"of {type(model).__name__} ({n!r}: {c!r})")  # fmt: skip
    sites, refused = [], {}
    for n, m in modules.items():
        if any(n.startswith(s.name + ".") or not s.name for s in sites):
            continue  # the inside of an attention module
        found = _site(n, m, declared.get(n))
        if isinstance(found, Site):
            sites.append(found)
        elif found is not None and n in declared:
            raise ParameterError("HEADS", heads, f"attention modules: {n!r} ({type(m).__name__}) "
                                 f"cannot lose heads: {found}; supported: {SUPPORTED}")  # fmt: skip
        elif found is not None:
            refused[n] = f"{n!r} ({type(m).__name__}): {found}"
    return sites, refused


def attention_modules(model: nn.Module, heads: Mapping[str, int] | None = None) -> pd.DataFrame:
    """What the head cut sees in a model: its attention modules, supported or not.

    Args:
        model: any model.
        heads: {module name: head count} (see ``find_sites``).

    Returns:
        One row per module (index: module): ``type``, ``layout`` ("mha", "pruned", "separate",
        "fused" or "refused"), ``heads``, ``head_dim`` and ``why`` (the reason of a refusal).
    """
    sites, refused = find_sites(model, heads)
    modules = dict(model.named_modules())
    rows = [{"module": s.name, "type": type(modules[s.name]).__name__, "layout": s.kind,
             "heads": s.heads, "head_dim": s.head_dim, "why": ""} for s in sites]  # fmt: skip
    rows += [{"module": n, "type": type(modules[n]).__name__, "layout": "refused", "heads": None,
              "head_dim": None, "why": why} for n, why in refused.items()]  # fmt: skip
    columns = ["module", "type", "layout", "heads", "head_dim", "why"]
    return pd.DataFrame(rows, columns=columns).set_index("module")


def _weights(site: Site, module: nn.Module) -> tuple[list[torch.Tensor], torch.Tensor]:
    """([q, k, v] weights, each (inner, width)) and the output projection's (width, inner)."""
    if site.kind == "mha":
        if module._qkv_same_embed_dim:
            qkv = list(module.in_proj_weight.detach().chunk(3))
        else:
            qkv = [module.q_proj_weight, module.k_proj_weight, module.v_proj_weight]
    elif site.kind == "pruned":
        qkv = [module.q_proj.weight, module.k_proj.weight, module.v_proj.weight]
    elif site.kind == "separate":
        qkv = [getattr(module, p).weight for p in site.parts]
    else:
        qkv = list(getattr(module, site.parts[0]).weight.chunk(3))
    return [w.detach() for w in qkv], getattr(module, site.out).weight.detach()


def _weight_scores(model: nn.Module, sites: Sequence[Site], criterion: str) -> list[torch.Tensor]:
    """Per site, one score per head: the l1/l2 norm of its weights, or uniform random."""
    modules = dict(model.named_modules())
    out = []
    for s in sites:
        if criterion == "random":
            out.append(torch.rand(s.heads, dtype=torch.float64))
            continue
        qkv, wo = _weights(s, modules[s.name])
        parts = [w.unflatten(0, (s.heads, -1)).flatten(1) for w in [*qkv, wo.T]]
        per_head = torch.cat(parts, dim=1).double()  # (heads, all the head's weights)
        out.append(per_head.norm(p=1 if criterion == "l1" else 2, dim=1).cpu())
    return out


def _replace(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` in ``root`` (the root itself for ""); returns the root."""
    if not name:
        return new
    parent, _, last = name.rpartition(".")
    setattr(root.get_submodule(parent), last, new)
    return root


def _unpacked(model: nn.Module, sites: Sequence[Site]) -> nn.Module:
    """A copy in which every ``nn.MultiheadAttention`` site is a ``PrunedMultiheadAttention``
    keeping all its heads (the same function, its output projection called as a module)."""
    new = copy.deepcopy(model)
    for s in sites:
        if s.kind == "mha":
            new = _replace(new, s.name, PrunedMultiheadAttention(new.get_submodule(s.name)))
    _no_nested_fast_path(new)
    return new


def _no_nested_fast_path(model: nn.Module) -> None:
    """Turn off the nested-tensor path of each ``nn.TransformerEncoder`` whose layers hold a
    ``PrunedMultiheadAttention`` (that path reads packed weights it no longer has)."""
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoder) and any(
            isinstance(x, PrunedMultiheadAttention) for x in m.modules()
        ):
            m.use_nested_tensor = False


def default_loss(output: object, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the last dimension of the output (its first tensor, if a tuple), every
    other dimension a sample: (batch, classes) or a language model's (batch, tokens, vocab)."""
    while isinstance(output, tuple | list):
        output = output[0]
    logits = output.to(torch.promote_types(output.dtype, torch.float32))
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten())


def _gradient_scores(
    model: nn.Module, sites: Sequence[Site], data: Iterable, loss_fn: Callable | None
) -> list[torch.Tensor]:
    """Michel et al.'s gate gradient per head, gates on each site's output projection input."""
    work = _unpacked(model, sites)
    points = [(work.get_submodule(s.name).get_submodule(s.out), s.heads, s.head_dim)
              for s in sites]  # fmt: skip
    return gate_gradients(work, points, data, loss_fn or default_loss)


def attention_head_scores(
    model: nn.Module,
    heads: Mapping[str, int] | None = None,
    criterion: str = "l1",
    data: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    loss_fn: Callable[[object, torch.Tensor], torch.Tensor] | None = None,
) -> pd.DataFrame:
    """The importance of every head of every supported attention module (module docstring).

    Args:
        model: any model (left unchanged, its mode restored).
        heads: {module name: head count} (see ``find_sites``).
        criterion: without ``data``, "l1" or "l2" (norm of the head's weights) or "random";
            with ``data``, "random" still gives random scores (the control).
        data: (inputs, targets) batches, e.g. a few validation batches: the gradient score.
        loss_fn: ``loss_fn(output, targets)``, the batch's mean loss (None: ``default_loss``).

    Returns:
        One row per (module, head): ``module``, ``block`` (the module's position), ``head``,
        ``importance`` and ``normalized`` (divided by its module's l2 norm).
    """
    check_choice("CRITERION", criterion, HEAD_CRITERIA)
    sites, _ = find_sites(model, heads)
    if not sites:
        raise ValueError(f"{type(model).__name__} has no attention module; supported: {SUPPORTED}")
    if loss_fn is not None and not callable(loss_fn):
        raise ParameterError("LOSS_FN", loss_fn, "a function (output, targets) -> scalar loss")
    if data is not None and criterion != "random":
        scores = _gradient_scores(model, sites, data, loss_fn)
    else:
        scores = _weight_scores(model, sites, criterion)
    table = score_table(scores, "head")
    table.insert(0, "module", [sites[b].name for b in table.block])
    return table


def _check_removal(sites: Sequence[Site], removal: object) -> dict[str, list[int]]:
    """Check {module name: head indices}: known modules, distinct heads, each keeping one."""
    by_name = {s.name: s for s in sites}
    if not isinstance(removal, Mapping):
        raise ParameterError("heads_to_remove", removal, "a dict module name -> head indices")
    out = {}
    for name, idx in removal.items():
        if name not in by_name:
            raise ParameterError("heads_to_remove", removal, f"attention modules {list(by_name)}")
        idx, n = list(idx), by_name[name].heads
        if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n for i in idx) \
                or len(set(idx)) != len(idx) or len(idx) >= n:  # fmt: skip
            raise ParameterError("heads_to_remove", removal, f"distinct heads 0..{n - 1} of "
                                 f"{name!r}, at most {n - 1} (each module keeps one)")  # fmt: skip
        out[name] = sorted(idx)
    return out


def _channels(site: Site, heads: Sequence[int], device: torch.device) -> torch.Tensor:
    """The q/k/v output channels (and output projection inputs) of the given heads."""
    d = site.head_dim
    return torch.cat([torch.arange(h * d, (h + 1) * d) for h in heads]).to(device)


def _cut(root: nn.Module, site: Site, keep: list[int]) -> nn.Module:
    """Keep only the ``keep`` heads of one site of ``root`` (a copy); returns the root."""
    m = root.get_submodule(site.name)
    if site.kind == "mha":
        return _replace(root, site.name, PrunedMultiheadAttention(m).keep(keep))
    if site.kind == "pruned":
        m.keep(keep)
        return root
    out = getattr(m, site.out)
    chans = _channels(site, keep, out.weight.device)
    inner = site.heads * site.head_dim
    rows = chans if site.kind == "separate" else torch.cat([i * inner + chans for i in range(3)])
    for p in site.parts:
        setattr(m, p, slice_linear(getattr(m, p), rows, None))
    setattr(m, site.out, slice_linear(out, None, chans))
    if site.attr:
        setattr(m, site.attr, len(keep))
    return root


def prune_attention_heads(
    model: nn.Module,
    heads_to_remove: Mapping[str, Sequence[int]],
    heads: Mapping[str, int] | None = None,
) -> nn.Module:
    """A copy of the model without the given heads (see the module's docstring).

    Args:
        model: any model with supported attention modules; left unchanged.
        heads_to_remove: {module name: head indices}; modules not named keep every head.
        heads: {module name: head count} (see ``find_sites``).

    Returns:
        The smaller copy: each named module keeps its kept heads' q/k/v rows and output
        projection columns and its head-count attribute says how many; an
        ``nn.MultiheadAttention`` that loses heads is a ``PrunedMultiheadAttention``.
    """
    sites, _ = find_sites(model, heads)
    removal = _check_removal(sites, heads_to_remove)
    new = copy.deepcopy(model)
    for s in sites:
        if removal.get(s.name):
            new = _cut(new, s, [h for h in range(s.heads) if h not in removal[s.name]])
    _no_nested_fast_path(new)
    return new


@torch.no_grad()
def silence_attention_heads(
    model: nn.Module,
    heads_to_remove: Mapping[str, Sequence[int]],
    heads: Mapping[str, int] | None = None,
) -> nn.Module:
    """A copy of the model with the given heads' contributions zeroed: their columns of each
    output projection set to 0 (every shape unchanged): what ``prune_attention_heads`` computes.

    Args:
        model: any model with supported attention modules; left unchanged.
        heads_to_remove: {module name: head indices}.
        heads: {module name: head count} (see ``find_sites``).

    Returns:
        The copy.
    """
    sites, _ = find_sites(model, heads)
    removal = _check_removal(sites, heads_to_remove)
    new = copy.deepcopy(model)
    for s in sites:
        if removal.get(s.name):
            out = new.get_submodule(s.name).get_submodule(s.out)
            out.weight[:, _channels(s, removal[s.name], out.weight.device)] = 0.0
    return new
