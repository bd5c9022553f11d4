"""Plumbing for the Model Optimization Lab notebooks, one module per concern.

Core (data to measurement):
    params         ParameterError and the checks every notebook's validation cell uses
    paths          where data, the model cache and reports live (working directory or environment)
    data           datasets that ship (official MNIST, mnist5k, digits), stratified splits, loaders
    models         the shared model family: MLP (LeNet-300-100 shape), LeNet-5, Caffe's LeNet-5
    train          seeding, device choice, fit/evaluate/predict with a history DataFrame
    pooling        2x2 max pooling by strided views for CPU inference: PyTorch's results, faster
    measure        accuracy, correctness per image, parameters, MACs, bytes, latency, kernel and
                   per-layer timings, ``compare`` tables
    stats          paired intervals of accuracy differences, McNemar's exact test, Wilson intervals
    machine        the CPU and versions a result was measured on; the int8 precaution it needs
    cache          trained models and lookup tables on disk, keyed by configuration, locked, atomic
    baseline       the shared trained baselines every notebook compares against
    record         record(name, value) in a notebook's outputs; read() for tests and reports
    facts          a run's facts as a small table: the shape every technique's summary() returns

Techniques:
    hpo            search spaces, the skorch estimator, grid/random/Bayesian search, backends
    pruning        unstructured magnitude pruning: masks, schedules, sparse storage and kernels
    neuron_pruning structured pruning of units and channels: criteria, removal, speed-up; any
                   model's channels by layer name through torch-pruning's dependency graph
    quantization   affine quantization from scratch, PyTorch int8 (eager, and FX graph mode for
                   any traceable model), ONNX Runtime int8
    distillation   Hinton's loss, logit matching, FitNets hints, a cached teacher, StudentLab
    normalization  batch norm from scratch, folding (a Sequential, or any model via torch.fx),
                   activation statistics
    schedules      learning-rate schedules by name, the LR range test
    compression    the stacked pipeline's sparse int8 artifact and entropy coding

Reporting (never imports torch at module level):
    targets        targets checked against measurements and their intervals
    leaderboard    every notebook's comparison in one table and picture
    plots          seaborn figures shared by notebooks
    report         run notebooks with papermill, render offline HTML, write the index (CLI)
    bench          every notebook at its defaults -> docs/benchmarks.md (CLI)
    paper          the papers' MNIST tables beside ours -> docs/papers.md (CLI)

Importing the package imports none of them, so ``import nbhelpers`` is cheap and free of side
effects."""

__version__ = "0.1.0"
