"""Running the lessons and reporting them: the top layer; nothing else imports it.

Modules:
    runner  run notebooks with papermill, render offline HTML, write the index
            (``python -m nbhelpers.reporting.runner``)
    bench   every notebook at its defaults -> docs/benchmarks.md (``python -m
            nbhelpers.reporting.bench``)
    paper   the papers' MNIST tables beside ours -> docs/papers.md (``python -m
            nbhelpers.reporting.paper``)

None of them imports torch at module level.
"""
