"""When to prune: Zhu and Gupta's (2017) cubic schedule, applied during training by
``GradualPruner`` (an ``after_step`` hook of ``nbhelpers.core.train.fit``), and the levels of Han
et al.'s (2015) prune-and-retrain rounds.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from nbhelpers.core.params import check_choice
from nbhelpers.techniques.pruning.retrain import RUN_SCOPES, prune_scope


def cubic_sparsity(step: int, final: float, begin: int, end: int, initial: float = 0.0) -> float:
    """Zhu and Gupta's (2017) gradual schedule ``s_t = s_f + (s_i - s_f) (1 - (t - t_0)/(t_n -
    t_0))^3``.

    Args:
        step: the training step ``t``.
        final: the final sparsity ``s_f``.
        begin: the step ``t_0`` where pruning starts (``s_i`` before it).
        end: the step ``t_n`` where ``s_f`` is reached (and kept after it).
        initial: the initial sparsity ``s_i``.

    Returns:
        The sparsity at ``step``.
    """
    if end <= begin:
        return final if step >= begin else initial
    progress = min(max((step - begin) / (end - begin), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


def iterative_sparsities(final: float, rounds: int) -> list[float]:
    """Han et al.'s prune-and-retrain levels ``s_k = 1 - (1 - s_f)^{k/K}``: each round keeps the
    same fraction.

    Args:
        final: sparsity after the last round.
        rounds: number of rounds ``K``.

    Returns:
        The ``K`` increasing sparsities, the last one equal to ``final``.
    """
    return [1.0 - (1.0 - final) ** (k / rounds) for k in range(1, rounds + 1)]


class GradualPruner:
    """An ``after_step`` hook for ``train.fit``: every ``every`` steps, prune to
    ``cubic_sparsity(step)``."""

    def __init__(
        self,
        final: float,
        begin: int,
        end: int,
        every: int = 10,
        scope: str = "global",
        initial: float = 0.0,
        keep: Sequence[float] | None = None,
    ):
        """Set up the schedule (steps count optimizer steps, from 1).

        Args:
            final: final sparsity.
            begin: step where pruning starts.
            end: step where ``final`` is reached.
            every: prune every this many steps (``Delta t``), and at ``end``.
            scope: "global", "layer" or "table" (``retrain.prune_scope``).
            initial: sparsity at ``begin``.
            keep: the kept share of each prunable layer, for the scope "table".
        """
        self.final, self.begin, self.end, self.every = final, begin, end, max(1, every)
        self.scope, self.initial, self.step = check_choice("scope", scope, RUN_SCOPES), initial, 0
        self.keep = keep
        self.history: list[tuple[int, float]] = []

    def __call__(self, model: nn.Module) -> None:
        """Count the step and prune when the schedule says so."""
        self.step += 1
        t = self.step
        if self.begin <= t <= self.end and ((t - self.begin) % self.every == 0 or t == self.end):
            s = cubic_sparsity(t, self.final, self.begin, self.end, self.initial)
            prune_scope(model, s, self.scope, self.keep)
            self.history.append((t, s))
