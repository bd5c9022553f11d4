"""The teacher's regularized training as Hinton et al. (2012) describe it for MNIST ("Improving
neural networks by preventing co-adaptation of feature detectors", arXiv:1207.0580), which Hinton,
Vinyals and Dean (2015, section 3) train their 1200-1200 teacher with: inputs jittered by a few
pixels, dropout on the inputs, a bound on the length of each hidden unit's incoming weight vector
(max-norm), and stochastic gradient descent whose momentum rises linearly while the learning rate
decays by a constant factor every epoch.

* ``RandomShift``: a training-mode layer that shifts each image by a fresh random offset;
* ``max_norm_`` and ``max_norm_hook``: the constraint, applied after every optimizer step;
* ``DampedMomentum``: the update rule ``dw <- p dw - (1 - p) lr grad; w <- w + dw``;
* ``momentum_at``, ``rate_at`` and ``MomentumRamp``: the per-epoch momentum and learning rate;
* ``TeacherRecipe``: the teacher's optimizer and regularizers as one checked value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nbhelpers.core.params import ParameterError, check_choice, check_float, check_int

#: Teacher optimizers: Adam with a cosine decay to 0 (this project's default), or the 2012 paper's
#: SGD with damped momentum, a linear momentum ramp and an exponential per-epoch rate decay.
TEACHER_OPTIMIZERS = ("adam", "sgd_momentum")
#: Momentum at the start and at the end of the ramp (Hinton et al. 2012: from 0.5 to 0.99).
MOMENTUM_START, MOMENTUM_END = 0.5, 0.99


class RandomShift(nn.Module):
    """Shifts each image of a batch by its own random offset of at most ``max_shift`` pixels along
    each axis (zero fill), in training mode only; in eval mode it returns its input.

    The offsets are drawn on the CPU from torch's global generator (seeded runs repeat on every
    device) and are uniform over the ``(2 * max_shift + 1) ** 2`` shifts, as
    ``transfer.shifted_copies`` draws them, but fresh for every batch.

    Args:
        max_shift: the largest shift in pixels (0: the layer does nothing).
    """

    def __init__(self, max_shift: int):
        super().__init__()
        self.max_shift = check_int("max_shift", max_shift, minimum=0)

    def extra_repr(self) -> str:
        return f"max_shift={self.max_shift}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The shifted batch (training mode) or ``x`` itself (eval mode, or ``max_shift`` 0).

        Args:
            x: images (n, C, H, W).

        Returns:
            A tensor of the shape and device of ``x``.
        """
        m = self.max_shift
        if not self.training or m == 0:
            return x
        if x.dim() != 4:
            raise ParameterError("x", tuple(x.shape), "images of shape (n, C, H, W)")
        n, C, H, W = x.shape
        offsets = torch.randint(0, 2 * m + 1, (2, n)).to(x.device)  # = m - shift
        rows = (offsets[0][:, None] + torch.arange(H, device=x.device))[:, None, :, None]
        cols = (offsets[1][:, None] + torch.arange(W, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channel = torch.arange(C, device=x.device)[None, :, None, None]
        return F.pad(x, (m, m, m, m))[batch, channel, rows, cols]


def hidden_linears(model: nn.Module) -> list[nn.Linear]:
    """The ``nn.Linear`` layers of a model whose outputs are hidden units: every one but the last.

    Args:
        model: a classifier whose last ``nn.Linear`` (in module order) is its output layer.

    Returns:
        The layers, in module order (empty for a model with one ``Linear`` or none).
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[:-1]


@torch.no_grad()
def max_norm_(model: nn.Module, c: float) -> int:
    """Bound the length of every hidden unit's incoming weight vector by ``c``, in place.

    A row ``w_j`` of a hidden ``Linear`` (the weights into unit ``j``; the bias is not part of it)
    longer than ``c`` is divided by ``||w_j|| / c`` (Hinton et al. 2012: "we renormalize the
    weights of the hidden unit by division"); shorter rows are left exactly as they are. The
    output layer is not constrained.

    Args:
        model: the model (its last ``nn.Linear`` is the output layer).
        c: the bound (> 0).

    Returns:
        How many rows were rescaled.
    """
    check_float("max_norm", c, 0.0, None, low_inclusive=False)
    rescaled = 0
    for layer in hidden_linears(model):
        w = layer.weight
        norms = torch.linalg.vector_norm(w, dim=1, keepdim=True)
        over = norms > c
        if bool(over.any()):
            w.copy_(torch.where(over, w * (c / norms), w))
            rescaled += int(over.sum())
    return rescaled


def max_norm_hook(c: float) -> Callable[[nn.Module], None] | None:
    """The ``after_step`` hook of ``train.fit`` that keeps the max-norm constraint.

    Args:
        c: the bound; 0 turns the constraint off.

    Returns:
        ``f(model)`` applying ``max_norm_(model, c)``, or None when ``c`` is 0.
    """
    if c == 0:
        return None
    check_float("max_norm", c, 0.0, None, low_inclusive=False)

    def hook(model: nn.Module) -> None:
        max_norm_(model, c)

    return hook


class DampedMomentum(torch.optim.Optimizer):
    """Stochastic gradient descent with Hinton et al.'s (2012) damped momentum.

    For every parameter ``w`` with gradient ``g`` (the mean over the mini-batch), each step does
    ``dw <- p * dw - (1 - p) * lr * g`` and ``w <- w + dw``, with ``dw`` starting at 0: at a
    constant gradient the step tends to ``lr * g`` whatever ``p``, so raising the momentum smooths
    the steps without making them longer. ``p`` and ``lr`` are read from the parameter group at
    every step (``MomentumRamp`` changes them each epoch).

    Args:
        params: the parameters (or parameter groups).
        lr: the learning rate.
        momentum: ``p`` in [0, 1).
    """

    def __init__(self, params, lr: float, momentum: float = MOMENTUM_START):
        check_float("lr", lr, 0.0, None, low_inclusive=False)
        check_float("momentum", momentum, 0.0, 1.0, high_inclusive=False)
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            p, lr = group["momentum"], group["lr"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                state = self.state[w]
                if "delta" not in state:
                    state["delta"] = torch.zeros_like(w)
                delta = state["delta"]
                delta.mul_(p).add_(w.grad, alpha=-(1.0 - p) * lr)
                w.add_(delta)
        return loss


def momentum_at(epoch: int, ramp_epochs: int) -> float:
    """The momentum of an epoch: linear from ``MOMENTUM_START`` at epoch 0 to ``MOMENTUM_END`` at
    epoch ``ramp_epochs``, then constant.

    Args:
        epoch: the epoch, counted from 0.
        ramp_epochs: epochs of the ramp (0: ``MOMENTUM_END`` from the start).

    Returns:
        ``p_t = (t / T) p_end + (1 - t / T) p_start`` for ``t < T``, else ``p_end``.
    """
    check_int("epoch", epoch, minimum=0)
    check_int("ramp_epochs", ramp_epochs, minimum=0)
    if epoch >= ramp_epochs:
        return MOMENTUM_END
    s = epoch / ramp_epochs
    return s * MOMENTUM_END + (1 - s) * MOMENTUM_START


def rate_at(epoch: int, lr: float, decay: float) -> float:
    """The learning rate of an epoch: ``lr * decay ** epoch`` (epoch counted from 0)."""
    check_int("epoch", epoch, minimum=0)
    return lr * decay**epoch


class MomentumRamp:
    """Sets an optimizer's momentum and learning rate for each epoch (``momentum_at``,
    ``rate_at``); ``step()`` moves to the next epoch, as ``train.fit`` calls it after each.

    Args:
        optimizer: a ``DampedMomentum`` (or any optimizer with "lr" and "momentum" in its groups).
        ramp_epochs: epochs over which the momentum rises.
        decay: the learning rate's factor per epoch, in (0, 1].
    """

    def __init__(self, optimizer: torch.optim.Optimizer, ramp_epochs: int, decay: float):
        check_int("ramp_epochs", ramp_epochs, minimum=0)
        check_float("decay", decay, 0.0, 1.0, low_inclusive=False)
        self.optimizer, self.ramp_epochs, self.decay = optimizer, ramp_epochs, decay
        self.base = [g["lr"] for g in optimizer.param_groups]
        self.epoch = 0
        self._apply()

    def _apply(self) -> None:
        for g, lr in zip(self.optimizer.param_groups, self.base):
            g["lr"] = rate_at(self.epoch, lr, self.decay)
            g["momentum"] = momentum_at(self.epoch, self.ramp_epochs)

    def step(self) -> None:
        """Move to the next epoch's momentum and rate."""
        self.epoch += 1
        self._apply()


@dataclass(frozen=True)
class TeacherRecipe:
    """How the teacher is optimized and regularized, beyond its architecture and epochs.

    The defaults are this project's lesson teacher (Adam, cosine decay, no input noise, no
    constraint); Hinton et al.'s 2012 recipe sets every field. ``check`` names a bad field as
    the key of the notebook's ``TEACHER_RECIPE`` dict.

    Attributes:
        optimizer: "adam" (cosine decay to 0) or "sgd_momentum" (``DampedMomentum`` with
            ``MomentumRamp``).
        input_dropout: dropout probability on the input pixels, in [0, 1).
        jitter: largest fresh random shift of each training image, in pixels (``RandomShift``).
        max_norm: bound on each hidden unit's incoming weight vector (0: none).
        momentum_ramp: epochs over which the momentum rises from 0.5 to 0.99 (sgd_momentum).
        lr_decay: the learning rate's factor per epoch (sgd_momentum).
    """

    optimizer: str = "adam"
    input_dropout: float = 0.0
    jitter: int = 0
    max_norm: float = 0.0
    momentum_ramp: int = 500
    lr_decay: float = 0.998

    def check(self, name: str = "TEACHER_RECIPE") -> TeacherRecipe:
        """Raise ``ParameterError`` naming the first bad field as ``name['field']``.

        Args:
            name: the notebook parameter the fields come from (a dict of them).

        Returns:
            The recipe itself.
        """
        check_choice(f"{name}['optimizer']", self.optimizer, TEACHER_OPTIMIZERS)
        f = f"{name}['input_dropout']"
        check_float(f, self.input_dropout, 0.0, 1.0, high_inclusive=False)
        check_int(f"{name}['jitter']", self.jitter, minimum=0, maximum=4)
        check_float(f"{name}['max_norm']", self.max_norm, 0.0, None)
        check_int(f"{name}['momentum_ramp']", self.momentum_ramp, minimum=0)
        check_float(f"{name}['lr_decay']", self.lr_decay, 0.0, 1.0, low_inclusive=False)
        return self

    def key(self) -> dict:
        """The fields that differ from the defaults (a cache key that leaves the default teacher's
        key as it was)."""
        default = asdict(TeacherRecipe())
        return {k: v for k, v in asdict(self).items() if v != default[k]}

    def input_layers(self) -> list[nn.Module]:
        """The layers to put before the teacher: ``RandomShift`` and ``nn.Dropout``, each only when
        it does something."""
        layers: list[nn.Module] = []
        if self.jitter:
            layers.append(RandomShift(self.jitter))
        if self.input_dropout:
            layers.append(nn.Dropout(self.input_dropout))
        return layers
