"""Unstructured (weight) magnitude pruning with ``torch.nn.utils.prune``, its schedules and storage.

A *prunable weight* is the ``weight`` of an ``nn.Linear`` or ``nn.Conv2d``; biases are kept.
Sparsity is always the **absolute** fraction of prunable weights that are zero, so that repeated
calls (iterative and gradual pruning) grow the existing masks up to the requested level:

* ``magnitude``: ``magnitude_prune(model, s, "global")`` removes the ``round(s * N)`` smallest |w|
  over all layers, ``magnitude_prune(model, s, "layer")`` removes ``round(s * N_l)`` in each layer;
  the naive fixed threshold, sparsity per layer, masks copied and applied;
* ``schedules``: ``cubic_sparsity`` is the gradual schedule of Zhu and Gupta (2017),
  ``GradualPruner`` applies it from the ``after_step`` hook of ``nbhelpers.core.train.fit``;
  ``iterative_sparsities`` are the levels of Han et al.'s (2015) prune-and-retrain rounds;
* ``retrain``: Han et al.'s (2015) retraining: ``l2_penalty`` (section 3.1), ``ScaledDropout`` at
  ``scaled_dropout_rate`` = ``D_o sqrt(C_ir / C_io)`` per hidden layer (section 3.2), and
  ``proportional_sparsities`` / ``prune_layers`` for per-layer rates such as their Table 2's
  (``prune_scope`` with scope "table", one of ``RUN_SCOPES``; ``kept_shares`` sets a model's
  shares beside such a table);
* ``lottery``: Frankle and Carbin's lottery tickets, rewound or on fresh weights;
* ``storage``: ``save_sparse`` writes CSR arrays (fp32 values, uint16 column indices where they
  fit, int32 row pointers) with NumPy, optionally deflate-compressed; ``save_torch_sparse`` writes
  torch's sparse CSR tensors; both load back to the exact dense weights; ``predicted_bytes``;
* ``kernels``: ``sparse_csr`` (a weight in CSR form), ``CSRLinear`` and ``to_csr_model`` (Linear
  layers on ``torch.sparse.mm``), ``kernel_latency`` (dense and sparse kernels of one matrix timed);
* ``semi_structured``: N:M sparsity (2:4: the 2 largest |w| of every 4 consecutive input weights),
  ``mask_2_4``, ``semi_structured_prune`` (masks kept while fine-tuning), ``is_n_m``, and
  ``to_semi_structured`` for ``torch.sparse.to_sparse_semi_structured`` (CUDA sparse tensor cores).

Everything public is re-exported here (``from nbhelpers.techniques import pruning;
pruning.magnitude_prune``); notebook 04's tables and facts are in
``nbhelpers.lessons.weight_pruning``.
"""

from nbhelpers.techniques.pruning.kernels import (
    CSRLinear,
    kernel_latency,
    sparse_csr,
    to_csr_model,
)
from nbhelpers.techniques.pruning.lottery import (
    lottery_table,
    lottery_ticket,
    rewound_ticket,
    train_with_snapshots,
)
from nbhelpers.techniques.pruning.magnitude import (
    METHODS,
    PRUNABLE,
    SCOPES,
    apply_masks,
    check_run,
    global_threshold,
    is_pruned,
    largest_linear,
    layer_sparsity,
    magnitude_prune,
    make_permanent,
    masks,
    prunable,
    sparsity,
    threshold_prune,
)
from nbhelpers.techniques.pruning.retrain import (
    RUN_SCOPES,
    ScaledDropout,
    dropout_rates,
    hidden_activations,
    kept_shares,
    l2_penalty,
    proportional_sparsities,
    prune_layers,
    prune_scope,
    scaled_dropout_rate,
)
from nbhelpers.techniques.pruning.schedules import (
    GradualPruner,
    cubic_sparsity,
    iterative_sparsities,
)
from nbhelpers.techniques.pruning.semi_structured import (
    check_n_m,
    is_n_m,
    mask_2_4,
    semi_structured_masks,
    semi_structured_prune,
    sparse_kernels_available,
    to_semi_structured,
)
from nbhelpers.techniques.pruning.storage import (
    LAYOUTS,
    dense_state,
    gzip_file,
    is_weight_matrix,
    load_sparse,
    load_torch_sparse,
    npz_bytes,
    predicted_bytes,
    save_sparse,
    save_torch_sparse,
    sparse_arrays,
    torch_sparse_state,
    torch_zip_bytes,
)

__all__ = [
    "CSRLinear",
    "kept_shares",
    "kernel_latency",
    "sparse_csr",
    "GradualPruner",
    "ScaledDropout",
    "LAYOUTS",
    "METHODS",
    "PRUNABLE",
    "RUN_SCOPES",
    "SCOPES",
    "apply_masks",
    "check_run",
    "cubic_sparsity",
    "dense_state",
    "dropout_rates",
    "global_threshold",
    "gzip_file",
    "hidden_activations",
    "is_pruned",
    "is_weight_matrix",
    "iterative_sparsities",
    "l2_penalty",
    "largest_linear",
    "layer_sparsity",
    "load_sparse",
    "load_torch_sparse",
    "lottery_table",
    "lottery_ticket",
    "magnitude_prune",
    "make_permanent",
    "masks",
    "npz_bytes",
    "predicted_bytes",
    "prunable",
    "proportional_sparsities",
    "prune_layers",
    "prune_scope",
    "rewound_ticket",
    "save_sparse",
    "save_torch_sparse",
    "scaled_dropout_rate",
    "sparse_arrays",
    "sparsity",
    "threshold_prune",
    "to_csr_model",
    "torch_sparse_state",
    "torch_zip_bytes",
    "train_with_snapshots",
    "check_n_m",
    "is_n_m",
    "mask_2_4",
    "semi_structured_masks",
    "semi_structured_prune",
    "sparse_kernels_available",
    "to_semi_structured",
]
