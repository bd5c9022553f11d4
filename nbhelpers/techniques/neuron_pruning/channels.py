"""Any ``nn.Module`` (residual blocks, named submodules, attention): ``prune_channels`` cuts the
channels of layers given by name through torch-pruning's dependency graph, which finds the layers
whose channels are coupled (both terms of a residual sum, the batch norms, the next layers'
inputs), and, in a model with attention, whole attention heads (``head_cut``, ``attention``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from nbhelpers.core.params import ParameterError, check_choice, check_fraction
from nbhelpers.core.train import module_device
from nbhelpers.techniques import pruning
from nbhelpers.techniques.neuron_pruning.attention import find_sites
from nbhelpers.techniques.neuron_pruning.head_cut import check_head_fraction, cut_heads
from nbhelpers.techniques.neuron_pruning.units import WEIGHTED, n_units

#: torch-pruning importance per criterion name for ``prune_channels`` (higher: kept).
GRAPH_CRITERIA = ("l1", "l2", "random")


def _importance(criterion: str):
    import torch_pruning as tp

    if criterion == "random":
        return tp.importance.RandomImportance()
    return tp.importance.MagnitudeImportance(p=1 if criterion == "l1" else 2)


@torch.no_grad()
def output_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The name of the weighted layer that runs last in a forward pass (the classifier).

    Args:
        model: any model with at least one Linear or Conv2d layer.
        example: an input batch (moved to the model's device).

    Returns:
        The layer's name.
    """
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda mod, i, o, n=n: order.append(n))
        for n, m in model.named_modules()
        if isinstance(m, WEIGHTED)
    ]
    was_training = model.training
    try:
        model.eval()(example[:1].to(module_device(model)))
    except Exception as err:  # the model's own forward: say which input it refused
        raise ValueError(
            f"{type(model).__name__} fails on the example of shape {tuple(example.shape)}: {err}"
        ) from err
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not order:
        raise ValueError(f"{type(model).__name__} ran no nn.Linear or nn.Conv2d layer")
    return order[-1]


def _inside(model: nn.Module, modules: Sequence[str]) -> set[str]:
    """Names of the Linear/Conv2d layers of ``model`` inside the named (attention) modules."""
    return {
        n
        for n, _ in pruning.prunable(model)
        if any(not m or n.startswith(m + ".") for m in modules)
    }


def check_prune_layers(
    name: str,
    layers: Sequence[str] | None,
    model: nn.Module,
    example: torch.Tensor,
    heads: Mapping[str, int] | None = None,
) -> list[str]:
    """Check the names of the layers ``prune_channels`` should cut (one forward pass, no tracing).

    The projections of attention modules are not channel layers: they lose whole heads.

    Args:
        name: parameter name, e.g. "PRUNE_LAYERS".
        layers: names of Linear/Conv2d layers, or None for every one but the classifier and the
            attention projections.
        model: a model of the architecture (an untrained one will do).
        example: an input batch the model accepts.
        heads: {attention module name: head count} (see ``attention.find_sites``).

    Returns:
        The names (every such layer for None; possibly none in a model with attention).

    Raises:
        ParameterError: an unknown name, the classifier, an attention projection, or an empty
            list for a model without attention.
    """
    out_name = output_layer(model, example)
    sites, refused = find_sites(model, heads)
    inside = _inside(model, [s.name for s in sites] + list(refused))
    allowed = [n for n, _ in pruning.prunable(model) if n != out_name and n not in inside]
    chosen = allowed if layers is None else list(layers)
    bad = [n for n in chosen if n not in allowed]
    if bad or not (chosen or sites or refused):
        also = " and the projections of its attention modules (they lose whole heads)"
        raise ParameterError(
            name,
            bad or chosen,
            f"names of Linear/Conv2d layers of {type(model).__name__} except its classifier "
            f"{out_name!r}{also if inside else ''}: " + ", ".join(allowed),
        )
    return chosen


def prune_channels(
    model: nn.Module,
    example: torch.Tensor,
    fraction: float,
    layers: Sequence[str] | None = None,
    criterion: str = "l1",
    *,
    head_fraction: float | None = None,
    heads: Mapping[str, int] | None = None,
    data: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[nn.Module, pd.DataFrame]:
    """Remove a fraction of the output channels (units) of named layers, and of the attention
    heads, of any model.

    **Channels.** torch-pruning's dependency graph finds every layer whose channels are coupled to
    a named one (the layers added by a residual connection must keep the same channels; a batch
    norm and the next layer's inputs follow), and cuts them together, scored as a group by
    ``criterion``. The classifier (``output_layer``) is never cut.

    **Heads.** A model with attention (``nn.MultiheadAttention``, batch_first or not, or a module
    of one's own with q/k/v projections: see ``attention``'s docstring for the layouts and how to
    declare a head count) also loses whole heads: of every attention module, each removed head's
    q, k and v rows and its output projection's columns (``head_cut.cut_heads``). The heads are
    ranked over all modules by the **gradient score of Michel et al. (2019)** when ``data`` is
    given (the mean |dL/d gate| of a gate on each head's output, normalized per module), by the
    **norm of each head's weights** (``criterion`` "l1" or "l2") otherwise, at random for
    "random"; each module keeps one. The cut is checked on ``example``: each attention module
    must compute what it computed with the removed heads' output columns zeroed. Heads go first,
    then channels, on the cut model; attention projections are never channel layers.

    Args:
        model: the trained model (a copy is pruned).
        example: an input batch, to trace the graph and check the head cut.
        fraction: fraction of each group's channels removed, in (0, 1).
        layers: names of the Linear/Conv2d layers to cut (None: every one but the classifier;
            in a model with attention, every one whose channels stay out of the attention
            projections and the classifier, e.g. an MLP's hidden layer); the layers coupled to
            them are cut too and listed in the table. ``[]``: heads only.
        criterion: one of ``GRAPH_CRITERIA`` (L1 or L2 norm of the group's weights, or random).
        head_fraction: fraction of all heads removed, in [0, 1) (None: ``fraction`` where the
            model has attention; 0: no head is cut).
        heads: {attention module name: head count} for modules of one's own whose head count is
            not an attribute (``num_heads``, ``n_head``, ``n_heads``, ``heads``).
        data: (inputs, targets) batches (a DataLoader, or a list of a few): heads are scored by
            the gradient score; None: by their weights' norm.
        loss_fn: ``loss_fn(model(inputs), targets)``, a scalar (None: cross-entropy over the
            output's last dimension).

    Returns:
        (the pruned copy, a table indexed by layer or attention module: ``type``, ``unit``
        ("channel" or "head"), ``units before`` and ``units after``, ``named``, ``cut``).

    Raises:
        ParameterError: a name that is not a prunable layer, a bad fraction, head fraction
            (removing every head of a module), ``heads`` entry or criterion.
        ValueError: the model cannot be traced on ``example``, a named layer is coupled to the
            classifier or an attention projection, an attention module is not supported, or
            the cut model no longer runs (a dependency the graph missed) or, for heads, computes
            another function.
    """
    check_choice("CRITERION", criterion, GRAPH_CRITERIA)
    check_fraction("PRUNE_FRACTION", fraction)
    sites, refused = find_sites(model, heads)
    hf = check_head_fraction(head_fraction, fraction, sites, refused)
    if loss_fn is not None and not callable(loss_fn):
        raise ParameterError("LOSS_FN", loss_fn, "a function (output, targets) -> scalar loss")
    named = check_prune_layers("LAYERS", layers, model, example, heads)
    out_name = output_layer(model, example)
    head_table = None
    if hf > 0:
        new, head_table = cut_heads(model, example, hf, criterion, heads, data, loss_fn)
    else:
        new = copy.deepcopy(model)
    inside = _inside(new.eval(), [s.name for s in sites] + list(refused))
    auto = layers is None and bool(sites or refused)
    named, cut = _cut_channels(new, example, fraction, named, criterion, (out_name, inside, auto))
    table = _channel_table(model, new, named, cut, head_table)
    return new.train(model.training), table


def _cut_channels(
    new: nn.Module,
    example: torch.Tensor,
    fraction: float,
    named: Sequence[str],
    criterion: str,
    context: tuple[str, set[str], bool],
) -> tuple[list[str], set[str]]:
    """Cut the channels of ``named`` layers of ``new`` in place through torch-pruning.

    Args:
        new: the copy to cut.
        example: an input batch.
        fraction: of each group's channels.
        named: the layers to cut.
        criterion: one of ``GRAPH_CRITERIA``.
        context: (the classifier's name, the attention projections' names, whether ``named``
            is the default, to be kept to the layers coupled to neither).

    Returns:
        (the named layers cut, the names of every layer whose output channels were cut).

    Raises:
        ValueError: a named layer coupled to the classifier or an attention projection, or a
            cut model that no longer runs.
    """
    import torch_pruning as tp

    out_name, inside, auto = context
    if not named:
        return [], set()
    kind = type(new).__name__
    modules = dict(new.named_modules())
    dg = _dependency_graph(new, example, kind)
    if auto:  # a model with attention: the layers whose channels stay inside a block
        avoid = inside | {out_name}
        named = [n for n in named if not _coupled_layers(dg, modules, [n], kind) & avoid]
        if not named:
            return [], set()
    cut = _coupled_layers(dg, modules, named, kind)
    if out_name in cut:
        raise ValueError(f"the channels of {named} are coupled to the classifier {out_name!r}")
    if cut & inside:
        raise ValueError(
            f"the channels of {named} are coupled to the attention projections "
            f"{sorted(cut & inside)} (the residual stream): name layers whose channels stay "
            "inside a block, such as an MLP's hidden layer"
        )
    weighted = [n for n, _ in pruning.prunable(new)]
    tp.pruner.MetaPruner(
        new,
        example[:1].to(module_device(new)),
        importance=_importance(criterion),
        pruning_ratio=fraction,
        ignored_layers=[modules[n] for n in weighted if n not in cut],
    ).step()
    _check_still_runs(new, example, kind)
    return list(named), cut


def _dependency_graph(new: nn.Module, example: torch.Tensor, kind: str):
    """torch-pruning's dependency graph of ``new``, traced on the first sample of ``example``.

    Args:
        new: the copy to be cut.
        example: an input batch.
        kind: the model's class name, for the message.

    Returns:
        The ``torch_pruning.DependencyGraph``.

    Raises:
        ValueError: torch-pruning cannot trace the model.
    """
    import torch_pruning as tp

    try:
        return tp.DependencyGraph().build_dependency(
            new, example_inputs=example[:1].to(module_device(new))
        )
    except Exception as err:  # torch-pruning raises many kinds; name the model and the cause
        raise ValueError(f"torch-pruning cannot trace {kind}: {err}") from err


def _coupled_layers(
    dg: Any, modules: Mapping[str, nn.Module], layers: Sequence[str], kind: str
) -> set[str]:
    """The layers whose output channels are cut together with the named ones (their groups).

    Args:
        dg: the dependency graph (``_dependency_graph``).
        modules: name -> module of the copy.
        layers: the named Linear/Conv2d layers.
        kind: the model's class name, for the message.

    Returns:
        Names of every layer whose output channels a named layer's group cuts (the named included).

    Raises:
        ValueError: the graph does not reach a named layer.
    """
    import torch_pruning as tp

    names = {m: n for n, m in modules.items()}
    cut: set[str] = set()
    for n in layers:
        m = modules[n]
        fn = (
            tp.prune_linear_out_channels if isinstance(m, nn.Linear) else tp.prune_conv_out_channels
        )
        if m not in dg.module2node:
            raise ValueError(
                f"torch-pruning's graph of {kind} does not reach layer {n!r}: its "
                "output reaches the logits through no differentiable path (a detach or .data?)"
            )
        for dep, _ in dg.get_pruning_group(m, fn, idxs=[0]):
            if dg.is_out_channel_pruning_fn(dep.handler) and dep.target.module in names:
                cut.add(names[dep.target.module])
    return cut


def _check_still_runs(new: nn.Module, example: torch.Tensor, kind: str) -> None:
    """Run the cut copy once on the first sample; a shape that no longer fits means a dependency
    the graph did not see.

    Raises:
        ValueError: the cut model fails.
    """
    try:
        with torch.no_grad():
            new(example[:1].to(module_device(new)))
    except Exception as err:  # a dependency the graph did not see: the shapes no longer fit
        raise ValueError(
            f"torch-pruning did not see every dependency of {kind} (a detach, "
            f"a .data or a non-differentiable op between layers?); the cut model fails: {err}"
        ) from err


def _channel_table(
    model: nn.Module,
    new: nn.Module,
    named: Sequence[str],
    cut: set[str],
    head_table: pd.DataFrame | None,
) -> pd.DataFrame:
    """One row per weighted layer of ``model`` (unit "channel") and per attention module (unit
    "head"), index ``layer``: type, unit, units before and after, named, cut (units removed)."""
    after = dict(new.named_modules())
    rows = []
    for n, m in pruning.prunable(model):
        units = n_units(after[n]) if isinstance(after.get(n), WEIGHTED) else None
        rows.append({"layer": n, "type": type(m).__name__, "unit": "channel",
                     "units before": n_units(m), "units after": units, "named": n in named,
                     "cut": n in cut or units != n_units(m)})  # fmt: skip
    heads = head_table.iterrows() if head_table is not None else ()
    for n, r in heads:
        rows.append({"layer": n, "type": r["type"], "unit": "head",
                     "units before": r["heads before"], "units after": r["heads after"],
                     "named": True, "cut": r["heads after"] < r["heads before"]})  # fmt: skip
    return pd.DataFrame(rows).set_index("layer")
