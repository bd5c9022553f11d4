"""Running the lessons and reporting them: the top layer; nothing else imports it.

Modules:
    runner  run notebooks with papermill, keep the last good report, write the index
            (``python -m nbhelpers.reporting.runner``)
    pages   the HTML: notebooks rendered for reading offline, the index page
    bench   every notebook at its defaults -> docs/benchmarks.md (``python -m
            nbhelpers.reporting.bench``)
    claims  the papers' MNIST figures, how each is read from a run, the profile's targets
    paper   the papers' MNIST tables beside ours -> docs/papers.md (``python -m
            nbhelpers.reporting.paper``)

None of them imports torch at module level.
"""
