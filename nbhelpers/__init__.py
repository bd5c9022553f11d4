"""Plumbing for the Model Optimization Lab notebooks.

One module per concern: ``data``, ``models``, ``train``, ``measure``, ``params``, ``record``,
``plots``, ``cache``, ``baseline`` and ``report``. Importing the package imports none of them,
so ``import nbhelpers`` is cheap and free of side effects.
"""

__version__ = "0.1.0"
