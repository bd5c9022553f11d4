"""Batch normalization: a from-scratch layer, folding into the preceding layer, training
diagnostics and a learning-rate sweep with and without it.

In training, a batch of pre-activations is normalized per feature (per channel for images) with its
own mean and variance, then scaled and shifted by learned :math:`\\gamma, \\beta`; running averages
of the mean and the unbiased variance replace them in evaluation, which makes the layer an affine
map that can be folded into the linear or convolutional layer before it.

* ``batchnorm``: ``BatchNorm`` from scratch (torch's buffer names, so a ``state_dict`` moves
  both ways), ``from_torch``, ``swap_batchnorm``, ``count_batchnorm``;
* ``folding``: ``fold_bn`` (one layer) and ``fold_batchnorm`` (a Sequential, or any model through
  ``torch.fx``);
* ``diagnostics``: ``ActivationStats`` (percentile hooks), ``bn_activation_and_gradient``,
  ``scale_invariance``, ``train_mode_accuracy`` (a forgotten ``model.eval()``);
* ``lr_sweep``: the learning-rate sweep with and without BN in numbers (``lr_facts``, ``lr_range``,
  ``speed_with_interval``, ``chosen_test``, ...);
* ``figure1``: Ioffe and Szegedy's Figure 1(a) at the paper's settings: ``sigmoid_net`` (with
  ``Binarize`` and ``gaussian_init``), ``StepAccuracy`` (test accuracy every few steps),
  ``first_not_above`` and ``above_share``, ``step_curves`` and ``compare_curves``.

Everything public is re-exported here (``from nbhelpers.techniques import normalization;
normalization.fold_batchnorm``); notebook 08's targets, facts, figures and its check against torch
are in ``nbhelpers.lessons.batch_normalization``.
"""

from nbhelpers.techniques.normalization.batchnorm import (
    BN_TYPES,
    BatchNorm,
    count_batchnorm,
    from_torch,
    swap_batchnorm,
)
from nbhelpers.techniques.normalization.diagnostics import (
    ActivationStats,
    bn_activation_and_gradient,
    scale_invariance,
    train_mode_accuracy,
)
from nbhelpers.techniques.normalization.figure1 import (
    Binarize,
    StepAccuracy,
    above_share,
    compare_curves,
    first_not_above,
    gaussian_init,
    sigmoid_net,
    step_curves,
)
from nbhelpers.techniques.normalization.folding import fold_batchnorm, fold_bn
from nbhelpers.techniques.normalization.lr_sweep import (
    NEAR_BEST_POINTS,
    accuracy_gap,
    check_lrs,
    chosen_test,
    epochs_to_reach,
    grid_lr,
    lr_facts,
    lr_range,
    padded,
    speed_table,
    speed_with_interval,
)

__all__ = [
    "BN_TYPES",
    "NEAR_BEST_POINTS",
    "ActivationStats",
    "BatchNorm",
    "Binarize",
    "StepAccuracy",
    "above_share",
    "accuracy_gap",
    "bn_activation_and_gradient",
    "check_lrs",
    "compare_curves",
    "chosen_test",
    "count_batchnorm",
    "epochs_to_reach",
    "first_not_above",
    "fold_batchnorm",
    "fold_bn",
    "from_torch",
    "gaussian_init",
    "grid_lr",
    "lr_facts",
    "lr_range",
    "padded",
    "scale_invariance",
    "sigmoid_net",
    "speed_table",
    "speed_with_interval",
    "step_curves",
    "swap_batchnorm",
    "train_mode_accuracy",
]
