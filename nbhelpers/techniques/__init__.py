"""What a user reuses on their own model: the techniques. Imports ``core`` and ``measure`` only.

Modules:
    hpo             search spaces, the skorch estimator, grid/random/Bayesian search, backends,
                    successive halving and Hyperband
    pruning         unstructured magnitude pruning: masks, schedules, sparse storage and kernels
    neuron_pruning  structured pruning of units, channels and attention heads: criteria, removal,
                    speed-up; any model's channels by layer name through torch-pruning's
                    dependency graph, and its attention heads (nn.MultiheadAttention or its own
                    q/k/v projections) by the same call
    quantization    affine quantization from scratch, PyTorch int8 (eager, and FX graph mode for
                    any traceable model), ONNX Runtime int8
    distillation    Hinton's loss, logit matching, FitNets hints, a cached teacher, StudentLab
    normalization   batch norm from scratch, folding (a Sequential, or any model via torch.fx),
                    activation statistics
    schedules       learning-rate schedules by name, the LR range test
    compression     the stacked pipeline's sparse int8 artifact and entropy coding
    recipe          one call that compresses a user's own model (notebook 11)
    compilation     torch.compile of any model against eager: first calls timed (a failure kept
                    as its reason), interleaved timing, speed-ups with intervals, float32
                    tolerances
"""
