"""Hyperparameter search for the shared MLP (notebooks 01-03).

* ``space``: the search space written once (``MLP_SPACE``) and its grid, distributions and
  scikit-optimize forms;
* ``estimator``: the MLP as a seeded skorch estimator, the tuning subset, a search's results;
* ``backends``: where the searches run (loky processes or a Dask cluster, through joblib);
* ``comparison``: search methods compared on a cached exhaustive grid (lookup objective,
  histories, best so far, trials to a target, plots);
* ``early_stopping``: successive halving and Hyperband against full-budget search at equal
  epochs, on cached learning curves of the grid;
* ``selection``: choosing by test accuracy (a common mistake) against choosing by
  cross-validation: the optimism of the test-selected score, on an untouched split;
* ``summary``: each notebook's facts as a small table its discussion refers to;
* ``winners``: the configuration a search chose, refitted and scored on the test images.

Everything public is re-exported here: ``from nbhelpers import hpo; hpo.MLP_SPACE``.
"""

from .backends import (
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
from .comparison import (
    LookupObjective,
    best_so_far,
    budget_table,
    cached_results,
    curves_frame,
    fold_curves,
    fold_results,
    gp_history,
    grid_history,
    grid_table,
    heatmap,
    plot_best_so_far,
    plot_grid_cost,
    plot_surrogate,
    random_history,
    shifted_grids,
    table_config,
    tpe_history,
    trials_to_target,
    trials_to_target_table,
)
from .early_stopping import (
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
)
from .estimator import SeededNet, WidthMLP, flat_subset, make_estimator, results_table
from .selection import (
    OPTIMISM_COLUMNS,
    check_selection_sizes,
    selection_optimism,
    selection_summary,
)
from .space import (
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
from .summary import bayes_summary, facts_of, grid_summary, random_summary, target_cells
from .winners import cell_params, cell_test_hits, winner_cell

__all__ = [
    "OPTIMISM_COLUMNS",
    "check_selection_sizes",
    "selection_optimism",
    "selection_summary",
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
    "bayes_summary",
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
    "facts_of",
    "flat_subset",
    "fold_curves",
    "fold_results",
    "friendly",
    "gp_history",
    "grid_history",
    "grid_summary",
    "grid_table",
    "heatmap",
    "make_estimator",
    "merge_space",
    "parse_scheduler",
    "plot_best_so_far",
    "plot_grid_cost",
    "plot_surrogate",
    "random_history",
    "random_summary",
    "results_table",
    "shifted_grids",
    "table_config",
    "target_cells",
    "to_distributions",
    "to_grid",
    "to_skopt",
    "tpe_history",
    "trials_to_target",
    "trials_to_target_table",
]
