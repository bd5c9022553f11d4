"""Hyperparameter search for the shared MLP (notebooks 01-03).

* ``space``: the search space written once (``MLP_SPACE``) and its grid, distributions and
  scikit-optimize forms;
* ``estimator``: the MLP as a seeded skorch estimator, the tuning subset, a search's results;
* ``backends``: where the searches run (loky processes or a Dask cluster, through joblib);
* ``comparison``: search methods compared cheaply on a lookup objective (histories of grid,
  random, GP and TPE search, best so far, trials to a target);
* ``exhaustive``: the exhaustive grid fitted once on every fold and epoch, cached, and kept as a
  lookup objective;
* ``plots``: best-so-far curves and a heatmap of a score over two hyperparameters;
* ``early_stopping``: successive halving and Hyperband against full-budget search at equal
  epochs, on cached learning curves of the grid;
* ``winners``: the configuration a search chose, refitted and scored on the test images;
* ``optuna_search`` (used as ``hpo.optuna_search``): Optuna's TPE or random sampler with ASHA or
  Hyperband on your own train-and-evaluate function at a budget of training steps (notebook 15).

Everything public is re-exported here: ``from nbhelpers.techniques import hpo; hpo.MLP_SPACE``.
The lessons' facts tables and lesson-only tables and plots are in ``nbhelpers.lessons.tuning``
and ``nbhelpers.lessons.selection``.
"""

from nbhelpers.techniques.hpo import optuna_search
from nbhelpers.techniques.hpo.backends import (
    BACKENDS,
    VERSIONED,
    backend,
    check_backend,
    check_scheduler,
    check_versions,
    client_answers,
    connect,
    package_versions,
    parse_scheduler,
    torch_threads_plugin,
)
from nbhelpers.techniques.hpo.comparison import (
    LookupObjective,
    best_so_far,
    budget_table,
    curves_frame,
    gp_history,
    grid_history,
    random_history,
    tpe_history,
    trials_to_target,
    trials_to_target_table,
    variance_shares,
)
from nbhelpers.techniques.hpo.early_stopping import (
    CurveObjective,
    check_halving,
    curve_table,
    curves_at_budget,
    epochs_table,
    epochs_to_target,
    full_budget_history,
    halving_history,
    hyperband_history,
    plot_epochs,
    rung_ranking,
)
from nbhelpers.techniques.hpo.estimator import (
    SeededNet,
    WidthMLP,
    flat_subset,
    make_estimator,
    results_table,
)
from nbhelpers.techniques.hpo.exhaustive import (
    cached_results,
    fold_curves,
    fold_results,
    grid_table,
    table_config,
)
from nbhelpers.techniques.hpo.plots import heatmap, plot_best_so_far
from nbhelpers.techniques.hpo.space import (
    DEFAULTS,
    MLP_SPACE,
    PARAM_NAMES,
    IntLogUniform,
    check_space,
    check_table,
    describe_space,
    dim_values,
    friendly,
    merge_space,
    to_distributions,
    to_grid,
    to_skopt,
)
from nbhelpers.techniques.hpo.winners import cell_params, cell_test_hits, winner_cell

__all__ = [
    "optuna_search",
    "cell_params",
    "cell_test_hits",
    "winner_cell",
    "plot_epochs",
    "CurveObjective",
    "check_halving",
    "curve_table",
    "curves_at_budget",
    "epochs_table",
    "epochs_to_target",
    "full_budget_history",
    "halving_history",
    "hyperband_history",
    "rung_ranking",
    "BACKENDS",
    "VERSIONED",
    "check_versions",
    "torch_threads_plugin",
    "package_versions",
    "DEFAULTS",
    "MLP_SPACE",
    "PARAM_NAMES",
    "IntLogUniform",
    "LookupObjective",
    "SeededNet",
    "WidthMLP",
    "backend",
    "best_so_far",
    "budget_table",
    "cached_results",
    "check_backend",
    "check_scheduler",
    "check_space",
    "check_table",
    "client_answers",
    "connect",
    "curves_frame",
    "describe_space",
    "dim_values",
    "flat_subset",
    "fold_curves",
    "fold_results",
    "friendly",
    "gp_history",
    "grid_history",
    "grid_table",
    "heatmap",
    "make_estimator",
    "merge_space",
    "parse_scheduler",
    "plot_best_so_far",
    "random_history",
    "results_table",
    "table_config",
    "to_distributions",
    "to_grid",
    "to_skopt",
    "tpe_history",
    "trials_to_target",
    "trials_to_target_table",
    "variance_shares",
]
