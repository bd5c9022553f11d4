"""How every result is judged: accuracy, size and latency, paired statistics, targets, verdicts.

Modules:
    metrics      accuracy and per-image correctness, parameters, MACs, bytes, latency, kernel and
                 per-layer timings, ``compare`` tables (imports torch)
    stats        paired intervals of accuracy differences, McNemar's exact test, Wilson intervals
    verdicts     a ``compare`` row's interval and verdict in words, above-chance
    targets      targets checked against measurements and their intervals
    facts        a run's facts as a small table (fact, value, unit, context)
    leaderboard  every notebook's comparison in one table and picture (no torch)

The names of ``metrics`` are also this package's (``from nbhelpers import measure;
measure.compare(...)``), loaded on first use, so importing ``nbhelpers.measure.stats`` or
``leaderboard`` does not import torch. Imports only ``nbhelpers.core``.
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = ("facts", "leaderboard", "metrics", "stats", "targets", "verdicts")


def __getattr__(name: str) -> Any:
    """A submodule, or a name of ``metrics``, imported when first asked for."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name.startswith("__"):
        raise AttributeError(name)
    metrics = importlib.import_module(f"{__name__}.metrics")
    try:
        return getattr(metrics, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    metrics = importlib.import_module(f"{__name__}.metrics")
    return sorted({*globals(), *_SUBMODULES, *(n for n in vars(metrics) if not n.startswith("_"))})
