"""The head half of ``channels.prune_channels``: score the heads of every attention module, remove
the lowest-scored fraction over all of them, and check the cut model computes what it should.

``cut_heads`` ranks the heads of all supported attention modules globally by their per-module
normalized score (``heads.select_removal``: each module keeps at least one head), cuts them
(``attention.prune_attention_heads``) and runs the cut model and ``silence_attention_heads`` of
the original (the removed heads' output projection columns zeroed) on two samples of the example:
each attention module's output, and the model's, must agree to ``sqrt(eps)`` of the dtype
relative to their size (3.5e-4 in float32: a wrong head layout moves them by their own size,
float32 reordering by about 1e-6). A module whose forward fails after the cut, or computes
another function, is named.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from nbhelpers.core.params import ParameterError, check_float
from nbhelpers.core.train import module_device
from nbhelpers.techniques.neuron_pruning.attention import (
    SUPPORTED,
    Site,
    attention_head_scores,
    find_sites,
    prune_attention_heads,
    silence_attention_heads,
)
from nbhelpers.techniques.neuron_pruning.heads import check_structured_fraction, select_removal

#: What a custom attention's forward must do for its heads to be cut (said when it does not).
REQUIREMENT = (
    "a custom attention's forward must take its shapes from its head-count attribute and a fixed "
    "head width (q.view(b, t, self.num_heads, self.head_dim), y.reshape(b, t, -1)), not from the "
    "model width, and its fused q/k/v outputs must be all q, then all k, then all v"
)


def check_head_fraction(
    head_fraction: object, fraction: float, sites: Sequence[Site], refused: Mapping[str, str]
) -> float:
    """The fraction of heads to remove: ``head_fraction``, or ``fraction`` when None.

    Args:
        head_fraction: the given HEAD_FRACTION (None: the channel fraction, where there are heads).
        fraction: the channel fraction PRUNE_FRACTION, already checked.
        sites: the supported attention modules (``attention.find_sites``).
        refused: the unsupported ones.

    Returns:
        The fraction in [0, 1), 0 for a model without attention.

    Raises:
        ParameterError: outside [0, 1), removing every head of a module, or positive for a model
            without attention.
        ValueError: a positive fraction with an unsupported attention module.
    """
    name = "HEAD_FRACTION" if head_fraction is not None else "PRUNE_FRACTION"
    if head_fraction is None:
        f = fraction if sites or refused else 0.0
    else:
        f = check_float(name, head_fraction, 0.0, 1.0, high_inclusive=False)
    if f > 0 and refused:
        raise ValueError(
            "cannot remove attention heads of " + "; ".join(refused.values()) + f". Supported: "
            f"{SUPPORTED}. Pass HEAD_FRACTION=0 to cut channels only"
        )
    if f > 0 and not sites:
        raise ParameterError(name, head_fraction, f"0 or None: the model has no attention module "
                             f"({SUPPORTED})")  # fmt: skip
    return check_structured_fraction(name, f, [s.heads for s in sites]) if sites else f


def _first_tensor(out: object) -> torch.Tensor | None:
    """The first tensor of a module's output (the output itself, or its first element)."""
    while isinstance(out, tuple | list) and out:
        out = out[0]
    return out if isinstance(out, torch.Tensor) else None


@torch.no_grad()
def _run(
    model: nn.Module, names: Sequence[str], example: torch.Tensor
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor], str | None, Exception | None]:
    """Run ``model`` in eval mode on ``example``, recording the named modules' outputs.

    Returns:
        (output, {name: its first output tensor, in the order they ran}, the named module that
        was running when the forward failed, the failure).
    """
    modules = dict(model.named_modules())
    outs: dict[str, torch.Tensor] = {}
    running: list[str] = []

    def entered(name: str) -> Callable:
        return lambda module, args: running.append(name)

    def left(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            running.remove(name)
            outs[name] = _first_tensor(output)

        return hook

    handles = [modules[n].register_forward_pre_hook(entered(n)) for n in names]
    handles += [modules[n].register_forward_hook(left(n)) for n in names]
    was_training = model.training
    model.eval()
    try:
        return _first_tensor(model(example.to(module_device(model)))), outs, None, None
    except Exception as err:  # the model's own forward: name the attention module that failed
        return None, outs, (running[-1] if running else None), err
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def _mismatch(got: torch.Tensor | None, ref: torch.Tensor | None) -> str | None:
    """Why ``got`` is not ``ref`` to ``sqrt(eps) * (1 + max |ref|)``, or None if it is."""
    if ref is None:
        return None
    if got is None or got.shape != ref.shape:
        return f"an output of shape {tuple(getattr(got, 'shape', ()))}, not {tuple(ref.shape)}"
    if not ref.is_floating_point():
        return None if torch.equal(got.cpu(), ref.cpu()) else "other values"
    diff = float((got.cpu().double() - ref.cpu().double()).abs().nan_to_num(0.0).max())
    tol = torch.finfo(ref.dtype).eps ** 0.5 * (1.0 + float(ref.abs().nan_to_num(0.0).max()))
    return None if diff <= tol else f"max |difference| {diff:.3g} beyond {tol:.3g}"


def check_head_cut(
    model: nn.Module,
    pruned: nn.Module,
    removal: Mapping[str, Sequence[int]],
    example: torch.Tensor,
    heads: Mapping[str, int] | None = None,
) -> None:
    """Check that a head-cut model is the original with the removed heads silenced.

    Args:
        model: the original.
        pruned: ``prune_attention_heads(model, removal, heads)``.
        removal: {module name: removed heads}.
        example: an input batch (its first two samples are run).
        heads: {module name: head count} (see ``attention.find_sites``).

    Raises:
        ValueError: naming the first attention module (in the order they run) that fails or
            computes another function, or the model's output if only that differs.
    """
    names = [s.name for s in find_sites(model, heads)[0]]
    example = example[:2]  # two samples: a batch/sequence mix-up still shows, at little cost
    ref, ref_sites, _, err = _run(silence_attention_heads(model, removal, heads), names, example)
    if err is not None:
        raise ValueError(f"{type(model).__name__} fails on the example: {err}") from err
    out, got, failing, err = _run(pruned, names, example)
    if err is not None:
        where = f"attention module {failing!r}" if failing else type(model).__name__
        raise ValueError(f"after the head cut, {where} fails: {err}. {REQUIREMENT}") from err
    for n in ref_sites:
        why = _mismatch(got.get(n), ref_sites[n])
        if why:
            raise ValueError(
                f"after the head cut, attention module {n!r} computes another function than "
                f"with those heads silenced ({why}): {REQUIREMENT}"
            )
    why = _mismatch(out, ref)
    if why:
        raise ValueError(
            f"after the head cut, {type(model).__name__}'s output is not that of the model with "
            f"those heads silenced ({why}): {REQUIREMENT}"
        )


def cut_heads(
    model: nn.Module,
    example: torch.Tensor,
    fraction: float,
    criterion: str = "l1",
    heads: Mapping[str, int] | None = None,
    data: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    loss_fn: Callable[[object, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[nn.Module, pd.DataFrame]:
    """Remove the lowest-scored ``fraction`` of heads over every attention module, checked.

    Args:
        model: any model with supported attention modules (left unchanged).
        example: an input batch, for the check.
        fraction: in [0, 1) (``check_head_fraction``).
        criterion: see ``attention.attention_head_scores`` (used without ``data``, or "random").
        heads: {module name: head count} (see ``attention.find_sites``).
        data: (inputs, targets) batches for the gradient score (None: weight norms).
        loss_fn: the loss of the gradient score (None: ``attention.default_loss``).

    Returns:
        (the cut copy, one row per attention module: ``module``, ``type``, ``heads before``,
        ``heads after``, ``removed`` (the original indices) and ``score``: "gradient" or the
        criterion).
    """
    scores = attention_head_scores(model, heads, criterion, data, loss_fn)
    chosen = select_removal(scores, fraction, "head")
    names = list(dict.fromkeys(scores.module))
    removal = {names[b]: idx for b, idx in chosen.items() if idx}
    pruned = prune_attention_heads(model, removal, heads)
    check_head_cut(model, pruned, removal, example, heads)
    modules = dict(model.named_modules())
    score = "gradient" if data is not None and criterion != "random" else criterion
    rows = [{"module": n, "type": type(modules[n]).__name__,
             "heads before": int((scores.module == n).sum()),
             "heads after": int((scores.module == n).sum()) - len(removal.get(n, [])),
             "removed": removal.get(n, []), "score": score} for n in names]  # fmt: skip
    return pruned, pd.DataFrame(rows).set_index("module")
