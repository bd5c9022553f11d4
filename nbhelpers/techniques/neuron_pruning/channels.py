"""Any ``nn.Module`` (residual blocks, named submodules): ``prune_channels`` cuts the channels of
layers given by name through torch-pruning's dependency graph, which finds the layers whose channels
are coupled (both terms of a residual sum, the batch norms, the next layers' inputs).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from nbhelpers.core.params import ParameterError, check_choice, check_fraction
from nbhelpers.core.train import module_device
from nbhelpers.techniques import pruning
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


def check_prune_layers(
    name: str, layers: Sequence[str] | None, model: nn.Module, example: torch.Tensor
) -> list[str]:
    """Check the names of the layers ``prune_channels`` should cut (one forward pass, no tracing).

    Args:
        name: parameter name, e.g. "PRUNE_LAYERS".
        layers: names of Linear/Conv2d layers, or None for every one but the classifier.
        model: a model of the architecture (an untrained one will do).
        example: an input batch the model accepts.

    Returns:
        The names (every prunable layer for None).

    Raises:
        ParameterError: an unknown name, the classifier, or an empty list.
    """
    out_name = output_layer(model, example)
    prunable = [n for n, _ in pruning.prunable(model) if n != out_name]
    chosen = prunable if layers is None else list(layers)
    bad = [n for n in chosen if n not in prunable]
    if bad or not chosen:
        raise ParameterError(
            name,
            bad or chosen,
            f"names of Linear/Conv2d layers of {type(model).__name__} "
            f"except its classifier {out_name!r}: " + ", ".join(prunable),
        )
    return chosen


def prune_channels(
    model: nn.Module,
    example: torch.Tensor,
    fraction: float,
    layers: Sequence[str] | None = None,
    criterion: str = "l1",
) -> tuple[nn.Module, pd.DataFrame]:
    """Remove a fraction of the output channels (units) of named layers of any model.

    torch-pruning's dependency graph finds every layer whose channels are coupled to a named
    one (the layers added by a residual connection must keep the same channels; a batch norm and
    the next layer's inputs follow), and cuts them together, scored as a group by ``criterion``.
    The classifier (``output_layer``) is never cut.

    Args:
        model: the trained model (a copy is pruned).
        example: an input batch, to trace the graph.
        fraction: fraction of each group's channels removed, in (0, 1).
        layers: names of the Linear/Conv2d layers to cut (None: every one but the classifier);
            the layers coupled to them are cut too and listed in the table.
        criterion: one of ``GRAPH_CRITERIA`` (L1 or L2 norm of the group's weights, or random).

    Returns:
        (the pruned copy, a table per weighted layer: type, units before and after, named).

    Raises:
        ParameterError: a name that is not a prunable layer, a bad fraction or criterion.
        ValueError: the model cannot be traced on ``example``, a named layer is coupled to the
            classifier, or the cut model no longer runs (a dependency the graph missed).
    """
    import torch_pruning as tp

    check_choice("CRITERION", criterion, GRAPH_CRITERIA)
    check_fraction("PRUNE_FRACTION", fraction)
    layers = check_prune_layers("LAYERS", layers, model, example)
    out_name = output_layer(model, example)
    new = copy.deepcopy(model).eval()
    modules = dict(new.named_modules())
    kind = type(model).__name__
    cut = _coupled_layers(_dependency_graph(new, example, kind), modules, layers, kind)
    if out_name in cut:
        raise ValueError(f"the channels of {layers} are coupled to the classifier {out_name!r}")
    weighted = [n for n, _ in pruning.prunable(new)]
    before = {n: n_units(modules[n]) for n in weighted}
    tp.pruner.MetaPruner(
        new,
        example[:1].to(module_device(new)),
        importance=_importance(criterion),
        pruning_ratio=fraction,
        ignored_layers=[modules[n] for n in weighted if n not in cut],
    ).step()
    _check_still_runs(new, example, kind)
    table = _channel_table(modules, weighted, before, layers, cut)
    return new.train(model.training), table


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
    modules: Mapping[str, nn.Module],
    weighted: Sequence[str],
    before: Mapping[str, int],
    layers: Sequence[str],
    cut: set[str],
) -> pd.DataFrame:
    """One row per weighted layer (index: layer): type, units before and after, named, cut."""
    return pd.DataFrame(
        [
            {
                "layer": n,
                "type": type(modules[n]).__name__,
                "units before": before[n],
                "units after": n_units(modules[n]),
                "named": n in layers,
                "cut": n in cut,
            }
            for n in weighted
        ]
    ).set_index("layer")
