"""Which test images a model gets right: per-image correctness, accuracy, prediction shifts."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from nbhelpers.core.pooling import fast_max_pool
from nbhelpers.core.train import Device, module_device

Predictor = Callable[[torch.Tensor], object]


def _as_tensor(out: object) -> torch.Tensor:
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))


def input_device(model: nn.Module | Predictor) -> torch.device:
    """Where a model's inputs go: a module's device (``module_device``), the CPU for a callable.

    Callables (ONNX Runtime sessions, NumPy functions) take CPU tensors.

    Args:
        model: a module or a callable.

    Returns:
        The device.
    """
    return module_device(model) if isinstance(model, nn.Module) else torch.device("cpu")


@fast_max_pool()  # PyTorch's results, faster on the CPU (nbhelpers.core.pooling)
def correct(
    model: nn.Module | Predictor, loader: DataLoader, device: Device | None = None
) -> np.ndarray:
    """Which samples a model classifies correctly, in the loader's order (for paired comparisons).

    Args:
        model: an ``nn.Module`` (run in eval mode without gradients) or a callable mapping a
            batch tensor to logits (a torch tensor or a NumPy array, e.g. ONNX Runtime), which
            gets CPU tensors.
        loader: yields (x, y) batches, in a fixed order (no shuffling).
        device: where to run a module (it is moved there); None runs it where it is.

    Returns:
        A boolean array, one entry per sample.
    """
    if isinstance(model, nn.Module):
        if device is not None:
            model.to(device)
        model.eval()
    device = input_device(model)
    hits = []
    with torch.inference_mode():
        for x, y in loader:
            pred = _as_tensor(model(x.to(device))).argmax(1).cpu()
            hits.append((pred == y.cpu()).numpy())
    return np.concatenate(hits).astype(bool)


def accuracy(
    model: nn.Module | Predictor, loader: DataLoader, device: Device | None = None
) -> float:
    """Fraction of correctly classified samples; works for modules and plain callables.

    Args:
        model: an ``nn.Module`` (run in eval mode without gradients) or a callable mapping a
            batch tensor to logits (a torch tensor or a NumPy array, e.g. ONNX Runtime), which
            gets CPU tensors.
        loader: yields (x, y) batches.
        device: where to run a module (it is moved there); None runs it where it is.

    Returns:
        The accuracy in [0, 1].
    """
    return float(correct(model, loader, device).mean())


#: The columns of ``prediction_shift``.
SHIFT_COLUMNS = (
    "accuracy",
    "agreement",
    "worst_class_accuracy",
    "top_class_share",
    "logit_scale",
    "logit_correlation",
)


def prediction_shift(
    logits: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor
) -> dict[str, float]:
    """How a changed model's predictions differ from a reference model's on the same samples.

    Accuracy alone cannot tell a model that lost a little everywhere from one that sends most
    samples to a few classes; these measures can.

    Args:
        logits: (n, classes) logits of the changed model (e.g. right after pruning).
        labels: (n,) true classes.
        reference: (n, classes) logits of the reference model (e.g. the dense one), same samples.

    Returns:
        accuracy; agreement (share of samples whose predicted class is the reference's);
        worst_class_accuracy (the lowest accuracy over the classes present in ``labels``);
        top_class_share (share of samples given the single most predicted class: about 1/classes
        for balanced predictions, 1 when every sample gets one class); logit_scale (Frobenius norm
        of the logits over the reference's); logit_correlation (Pearson correlation of all logit
        entries with the reference's).
    """
    logits, reference = logits.detach().double().cpu(), reference.detach().double().cpu()
    labels = labels.cpu()
    if logits.shape != reference.shape or logits.ndim != 2 or len(labels) != len(logits):
        raise ValueError(
            f"logits {tuple(logits.shape)} and reference {tuple(reference.shape)} must be the same "
            f"(n, classes), with n = len(labels) = {len(labels)}"
        )
    pred, ref_pred = logits.argmax(1), reference.argmax(1)
    right = (pred == labels).double()
    per_class = [float(right[labels == c].mean()) for c in labels.unique()]
    flat, ref_flat = logits.flatten(), reference.flatten()
    return {
        "accuracy": float(right.mean()),
        "agreement": float((pred == ref_pred).double().mean()),
        "worst_class_accuracy": min(per_class),
        "top_class_share": float(torch.bincount(pred).max()) / len(pred),
        "logit_scale": float(flat.norm() / ref_flat.norm()),
        "logit_correlation": float(torch.corrcoef(torch.stack([flat, ref_flat]))[0, 1]),
    }
