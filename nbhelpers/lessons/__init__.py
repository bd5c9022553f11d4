"""Lesson-only code: one notebook's facts table, verdict rows and lesson-only measurements, which a
user's own model does not need. Imports ``core``, ``measure`` and ``techniques``.

Modules:
    baseline   notebook 00's facts: the two shared baselines against each other
    tuning     notebooks 01-03's facts tables (grid, random, Bayesian search, early stopping)
    selection  notebook 01's common mistake: choosing by test accuracy, its optimism measured
    weight_pruning  notebook 04's sweep rows, storage tables (measured and predicted bytes), facts
    neuron_pruning  notebook 05's time by layer type and facts table
    quantization  notebook 06's targets (int8 accuracy, size, speed; 4-bit) and facts table
    distillation  notebook 07's soft-target table (teacher at several temperatures) and facts
    batch_normalization  notebook 08's check against torch, targets, figures, drift, facts
    lr_schedules  notebook 09's runs per schedule against constant, scaling rule, shapes, facts
    compression_pipeline  notebook 10's Pareto board, search front vs hand-built, facts
    your_own_model  notebook 11's loss in words and facts table
"""
