"""How every result is judged: accuracy, size and latency, paired statistics, targets, verdicts.

Modules:
    hits         which images a model gets right: per-image correctness, accuracy, shifts
    size         parameters and non-zeros, multiply-adds, bytes on disk
    timing       latency at several batch sizes, per-layer timings
    comparison   ``compare``: models side by side, paired intervals, size and latency
    stats        paired intervals of accuracy differences, McNemar's exact test, Wilson intervals
    bpc          bits per character of a language model, block-bootstrap intervals (paired too)
    generation   characters per second a character model samples, models side by side
    verdicts     a ``compare`` row's interval and verdict in words, above-chance
    targets      targets checked against measurements and their intervals
    facts        a run's facts as a small table (fact, value, unit, context)
    leaderboard  every notebook's comparison in one table and picture (no torch)
    lm_leaderboard  the transformer lessons' models in one table: bits/char, bytes, speed (no torch)
    transfer     each technique's MNIST verdict beside its transformer verdict (no torch)

The public names of ``hits``, ``size``, ``timing`` and ``comparison`` (four of the six that import
torch; ``bpc`` and ``generation`` are reached as ``measure.bpc`` and ``measure.generation``) are
also this package's (``from nbhelpers import measure; measure.compare(...)``), loaded on first use,
so importing ``nbhelpers.measure.stats`` or ``leaderboard`` does not import torch. Imports only
``nbhelpers.core``.
"""

from __future__ import annotations

import importlib
from typing import Any

#: The modules whose public names are the package's own.
_MEASURING = ("hits", "size", "timing", "comparison")
_SUBMODULES = (
    "bpc",
    "facts",
    "generation",
    "leaderboard",
    "lm_leaderboard",
    "stats",
    "targets",
    "verdicts",
    *_MEASURING,
)


def _public(module: Any) -> set[str]:
    """Names a measuring module defines (not those it imports)."""
    return {
        n
        for n, v in vars(module).items()
        if not n.startswith("_") and getattr(v, "__module__", module.__name__) == module.__name__
    }


def __getattr__(name: str) -> Any:
    """A submodule, or a public name of a measuring module, imported when first asked for."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if not name.startswith("__"):
        for mod in _MEASURING:
            module = importlib.import_module(f"{__name__}.{mod}")
            if name in vars(module) and not name.startswith("_"):
                return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    names = {*globals(), *_SUBMODULES}
    for mod in _MEASURING:
        names |= _public(importlib.import_module(f"{__name__}.{mod}"))
    return sorted(names)
