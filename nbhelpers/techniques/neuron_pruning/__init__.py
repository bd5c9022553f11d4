"""Structured (neuron and channel) pruning of ``nn.Sequential`` models: rank units, then cut them
out.

A *unit* is an output row of an ``nn.Linear`` (a hidden neuron) or an output channel of an
``nn.Conv2d`` (a filter). Every weighted layer except the last (the classifier) is prunable.
Scores follow one convention: **higher means more important**; the lowest-scored units go.

* ``units``: the prunable layers and their widths, how many units a fraction removes, the checks;
* ``criteria``: weight norms (L1, L2), the mean activation and 1 - APoZ (Hu et al. 2016), the
  first-order Taylor estimate (Molchanov et al. 2017), random scores and the inverted L1 mistake;
  ``select_keep`` drops the lowest-scored units per layer or globally;
* ``surgery``: ``remove_units`` builds the smaller model by hand (the pruned layer keeps the rows
  of the kept units, a BatchNorm after it their statistics, the next weighted layer the matching
  input columns); ``prune`` scores, selects and cuts; the same cut through torch-pruning; dead
  units; how far the logits moved; what the cut saved;
* ``channels``: for any other model (residual blocks, named submodules, attention)
  ``prune_channels`` cuts the channels of layers given by name through torch-pruning's dependency
  graph, which finds the layers whose channels are coupled (both terms of a residual sum, the batch
  norms, the next layers' inputs), and in the same call whole attention heads (``head_cut``);
* ``attention``: the attention modules of any model (``nn.MultiheadAttention``, or one's own with
  separate or fused q/k/v projections and a head count): ``attention_modules`` lists them,
  ``attention_head_scores`` scores their heads (Michel et al.'s gradient with data, the weights'
  norm without), ``prune_attention_heads`` cuts heads out, ``silence_attention_heads`` zeroes them;
* ``mha``: ``PrunedMultiheadAttention``, what an ``nn.MultiheadAttention`` becomes when it loses
  heads (its forward cannot take a head count below its width);
* ``head_cut``: ``cut_heads`` ranks the heads of every attention module globally, cuts the lowest
  and checks the cut model against the original with those heads silenced (``check_head_cut``);
* ``heads``: for a transformer (``core.transformer.CharTransformer``), whole attention heads and
  MLP hidden units: ``head_importance`` (the gradient of a gate on each head's output, Michel et
  al. 2019, normalized per layer) and ``mlp_unit_importance`` (the same gate on each unit, the
  Taylor criterion of Molchanov et al. 2017), ``select_removal`` (a global ranking),
  ``prune_heads`` (slices the fused q/k/v ``Linear`` and the output projection) and
  ``prune_mlp_units``; ``gated`` runs the model with gates and ``gate_difference`` checks that a
  removed head is a closed gate; ``gate_gradients`` is the gate score of any model's Linear inputs.

Everything public is re-exported here (``from nbhelpers.techniques import neuron_pruning;
neuron_pruning.prune``); notebook 05's facts table is in ``nbhelpers.lessons.neuron_pruning``.
"""

from nbhelpers.techniques.neuron_pruning.attention import (
    HEAD_ATTRS,
    HEAD_CRITERIA,
    attention_head_scores,
    attention_modules,
    default_loss,
    find_sites,
    prune_attention_heads,
    silence_attention_heads,
)
from nbhelpers.techniques.neuron_pruning.channels import (
    GRAPH_CRITERIA,
    check_prune_layers,
    output_layer,
    prune_channels,
)
from nbhelpers.techniques.neuron_pruning.criteria import (
    activation_stats,
    best_criterion,
    select_keep,
    taylor_scores,
    unit_scores,
    weight_norm_scores,
)
from nbhelpers.techniques.neuron_pruning.head_cut import (
    check_head_cut,
    check_head_fraction,
    cut_heads,
)
from nbhelpers.techniques.neuron_pruning.heads import (
    KINDS,
    attention_layers,
    check_structured_fraction,
    closed_gates,
    gate_difference,
    gate_gradients,
    gated,
    head_importance,
    mlp_layers,
    mlp_unit_importance,
    prune_heads,
    prune_mlp_units,
    score_table,
    select_removal,
    slice_linear,
    structure,
)
from nbhelpers.techniques.neuron_pruning.mha import PrunedMultiheadAttention
from nbhelpers.techniques.neuron_pruning.surgery import (
    complement,
    correct_over_seeds,
    dead_units,
    output_change,
    prune,
    remove_units,
    shrinkage,
    torch_pruning_remove,
    zero_outgoing,
)
from nbhelpers.techniques.neuron_pruning.units import (
    CONTROLS,
    CRITERIA,
    NORMS,
    SCOPES,
    WEIGHTED,
    check_criteria,
    check_prune_fraction,
    n_removed,
    n_units,
    prunable_layers,
    weighted_layers,
    widths,
)

__all__ = [
    "CONTROLS",
    "CRITERIA",
    "GRAPH_CRITERIA",
    "HEAD_ATTRS",
    "HEAD_CRITERIA",
    "KINDS",
    "NORMS",
    "SCOPES",
    "WEIGHTED",
    "PrunedMultiheadAttention",
    "activation_stats",
    "attention_head_scores",
    "attention_layers",
    "attention_modules",
    "best_criterion",
    "check_criteria",
    "check_head_cut",
    "check_head_fraction",
    "check_prune_fraction",
    "check_prune_layers",
    "check_structured_fraction",
    "closed_gates",
    "complement",
    "correct_over_seeds",
    "cut_heads",
    "dead_units",
    "default_loss",
    "find_sites",
    "gate_difference",
    "gate_gradients",
    "gated",
    "head_importance",
    "mlp_layers",
    "mlp_unit_importance",
    "n_removed",
    "n_units",
    "output_change",
    "output_layer",
    "prunable_layers",
    "prune",
    "prune_attention_heads",
    "prune_channels",
    "prune_heads",
    "prune_mlp_units",
    "remove_units",
    "score_table",
    "select_keep",
    "select_removal",
    "shrinkage",
    "silence_attention_heads",
    "slice_linear",
    "structure",
    "taylor_scores",
    "torch_pruning_remove",
    "unit_scores",
    "weight_norm_scores",
    "weighted_layers",
    "widths",
    "zero_outgoing",
]
