"""Running the lessons and reporting them: the top layer; nothing else imports it.

Modules:
    runner  run notebooks with papermill, keep the last good report, write the index
            (``python -m nbhelpers.reporting.runner``)
    pages   the HTML: notebooks rendered for reading offline, the index page
    bench   every notebook at its defaults -> docs/benchmarks.md (``python -m
            nbhelpers.reporting.bench``)
    claims  the papers' MNIST figures, how each is read from a run, the profile's targets
    record_claims  notebook 10's compression record: the figures it is set against, its targets
    figure1_claims  Ioffe and Szegedy's Figure 1(a): the share of notebook 08's curve with BN above
    hinton_claims  Hinton et al.'s section 3: notebook 07's test errors, their targets, the
            teacher's validation error by epoch
    paper   the papers' MNIST tables beside ours -> docs/papers.md (``python -m
            nbhelpers.reporting.paper``)
    nanogpt_reference  nanoGPT's own model.py trained at the transformer baseline's settings,
            scored beside it -> docs/nanogpt_reference.json (``python -m
            nbhelpers.reporting.nanogpt_reference --nanogpt DIR``)

None of them but nanogpt_reference (which trains a model) imports torch at module level.
"""
