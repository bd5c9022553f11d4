"""Plumbing for the Model Optimization Lab notebooks, in five layers; each imports only those
below it (``make test`` checks the arrows with import-linter's contract in pyproject.toml):

    reporting/   run the notebooks, write the report, the benchmark and the papers' tables
        ^
    lessons/     one notebook's facts table and lesson-only measurements
        ^
    techniques/  what a user reuses on their own model: hpo, pruning, neuron_pruning,
        ^        quantization, distillation, normalization, schedules, compression, recipe
    measure/     how every result is judged: accuracy, bytes, latency, paired statistics,
        ^        verdicts, targets, facts tables, the leaderboard
    core/        what every lesson stands on: params, paths, data, models, train, cache,
                 machine, record, plots, the shared baselines

Each layer's ``__init__`` lists its modules. Importing the package imports none of them, so
``import nbhelpers`` is cheap and free of side effects.
"""

__version__ = "0.1.0"
