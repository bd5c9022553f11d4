"""The shared MLP as a scikit-learn estimator (skorch), the tuning data, and a search's results.

``make_estimator`` wraps the MLP of ``nbhelpers.core.models`` in a skorch ``NeuralNetClassifier``
that
seeds torch before every fit, so that a configuration scores the same whichever worker fits it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from skorch import NeuralNetClassifier
from torch import nn

from nbhelpers.core.models import MLP
from nbhelpers.core.params import ParameterError
from nbhelpers.techniques.hpo.space import DEFAULTS, PARAM_NAMES, friendly


class WidthMLP(MLP):
    """The shared MLP with one width knob: hidden layers (width, width // 3), like 300-100."""

    def __init__(
        self, in_features: int = 784, width: int = 300, n_classes: int = 10, dropout: float = 0.0
    ):
        hidden = (int(width), max(1, int(width) // 3))
        super().__init__(in_features, hidden, n_classes, dropout=float(dropout))


class SeededNet(NeuralNetClassifier):
    """A skorch classifier that seeds torch before every fit, so that each fit repeats exactly."""

    def __init__(self, module, criterion=nn.CrossEntropyLoss, random_state: int = 0, **kwargs):
        super().__init__(module, criterion=criterion, **kwargs)
        self.random_state = random_state

    def fit(self, X, y=None, **fit_params):
        """Seed torch with ``random_state``, then fit as skorch does.

        ``device="auto"`` resolves here, in the process that fits (a Dask worker picks its own
        GPU or its CPU).
        """
        if self.device == "auto":
            self.set_params(device="cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(self.random_state)
        return super().fit(X, y, **fit_params)


def make_estimator(
    in_features: int,
    n_classes: int = 10,
    epochs: int = 5,
    seed: int = 0,
    device: str = "cpu",
    **params: Any,
) -> SeededNet:
    """A skorch estimator of the shared MLP (Adam, cross-entropy) for scikit-learn's search API.

    Args:
        in_features: input size (784 for 28x28 images).
        n_classes: number of classes.
        epochs: training epochs of every fit.
        seed: torch seed set before every fit (initialisation and shuffling).
        device: where to train ("auto": the fitting process's GPU if it has one, else its CPU).
        **params: hyperparameters by friendly name (``lr``, ``hidden``, ``weight_decay``,
            ``batch_size``, ``dropout``); the rest come from ``DEFAULTS``.

    Returns:
        An unfitted ``SeededNet`` (a ``skorch.NeuralNetClassifier``).
    """
    unknown = set(params) - set(PARAM_NAMES)
    if unknown:
        allowed = "hyperparameters among " + ", ".join(PARAM_NAMES)
        raise ParameterError("params", sorted(unknown), allowed)
    hp = {**DEFAULTS, **params}
    return SeededNet(
        WidthMLP,
        module__in_features=in_features,
        module__n_classes=n_classes,
        module__width=int(hp["hidden"]),
        module__dropout=float(hp["dropout"]),
        optimizer=torch.optim.Adam,
        lr=float(hp["lr"]),
        optimizer__weight_decay=float(hp["weight_decay"]),
        # PyTorch's one-kernel Adam where it exists (CPU, CUDA): the same rule, faster per step
        optimizer__fused=str(device).split(":")[0] in ("auto", "cpu", "cuda") or None,
        batch_size=int(hp["batch_size"]),
        max_epochs=int(params.get("epochs", epochs)),
        iterator_train__shuffle=True,
        train_split=None,
        verbose=0,
        device=device,
        random_state=seed,
    )


def flat_subset(
    X: np.ndarray, y: np.ndarray, n: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A stratified subset of ``n`` samples (all when ``n`` is 0 or too large), images flattened.

    Args:
        X: images (N, 1, H, W).
        y: labels (N,).
        n: samples to keep.
        seed: seed of the draw.

    Returns:
        (X as float32 (n, H*W), y as int64).
    """
    from sklearn.model_selection import train_test_split

    X = X.reshape(len(X), -1).astype(np.float32)
    if 0 < n < len(y):
        idx, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y, random_state=seed)
        idx = np.sort(idx)
        X, y = X[idx], y[idx]
    return X, y.astype(np.int64)


def results_table(search: Any) -> pd.DataFrame:
    """A search's ``cv_results_`` as a table: friendly parameters, mean and std CV score, fit time.

    Args:
        search: a fitted ``GridSearchCV``, ``RandomizedSearchCV`` or ``BayesSearchCV``.

    Returns:
        One row per trial, in the order tried (``trial`` numbered from 1).
    """
    cv = search.cv_results_
    df = pd.DataFrame([friendly(p) for p in cv["params"]])
    df["mean_cv"] = np.asarray(cv["mean_test_score"], dtype=float)
    df["std_cv"] = np.asarray(cv["std_test_score"], dtype=float)
    df["fit_seconds"] = np.asarray(cv["mean_fit_time"], dtype=float)
    df.insert(0, "trial", np.arange(1, len(df) + 1))
    return df
