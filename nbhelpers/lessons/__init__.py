"""Lesson-only code: one notebook's facts table, verdict rows and lesson-only measurements, which a
user's own model does not need. Imports ``core``, ``measure`` and ``techniques``.

Modules (a notebook imports its own as ``lesson``):
    baseline              00: the two shared baselines against each other
    tuning                01-03: facts tables of grid, random and Bayesian search, early stopping;
                          the grid-cost, shifted-grid and surrogate plots
    selection             01: the common mistake, choosing by test accuracy, its optimism measured
    weight_pruning        04: sweep rows, storage tables (measured and predicted bytes), facts
    neuron_pruning        05: time by layer type, facts
    quantization          06: targets (int8 accuracy, size, speed; 4-bit), facts
    int8_configs          06: ONNX Runtime's int8 configurations side by side, their targets
    distillation          07: the teacher's soft targets at several temperatures, facts
    batch_normalization   08: the check against torch, targets, figures, drift, facts
    bn_robustness         08: BN at the robustness rate again with warm-up and without momentum
    lr_schedules          09: runs per schedule against constant, the scaling rule, shapes, facts
    compression_pipeline  10: the Pareto board, the search's front against the hand-built artifact
    your_own_model        11: the loss in words, facts
    transformer_compression  12: bits/char rows with paired intervals, cached pruned models,
                          samples side by side, targets, facts
    transformer_sparsity  12: the cached 2:4 model, 2:4 against 50% unstructured with paired
                          intervals, ONNX Runtime's dynamic int8 beside torch.ao's, their facts
    transformer_training  13: cached train-and-score runs, trained / failed / diverged, paired
                          intervals over pooled seeds, the pre-LN vs post-LN heatmap and target,
                          the LR range test on a language model, facts
    transformer_distillation  14: cached distilled students, sizes, bits/char with paired
                          intervals and the share of the gap closed, the temperature chosen on
                          validation, target, facts
    lm_reference          12: the baseline beside nanoGPT's model.py at the same settings
                          (read from docs/nanogpt_reference.json), the baseline's targets
    transformer_speed     16: compile stages (first calls timed, failures kept), equality checks
                          with float32 tolerances, speed tables per workload, target, facts
    transformer_search    15: the transformer as a search's train-and-evaluate function, cached
                          searches with their best models, the winners' paired test interval,
                          how a rung ranks trials, target, facts
"""
