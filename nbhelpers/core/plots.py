"""Seaborn figures shared by the notebooks; every function returns its matplotlib Figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure


def sample_grid(X: np.ndarray, y: np.ndarray, per_class: int = 8, seed: int = 0) -> Figure:
    """A grid of sample images, one row per class.

    Args:
        X: images (n, 1, H, W) or (n, H, W).
        y: labels (n,).
        per_class: images per row.
        seed: which samples to draw.

    Returns:
        The figure.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.8, len(classes) * 0.8))
    for r, c in enumerate(classes):
        picks = rng.choice(np.flatnonzero(y == c), size=per_class, replace=False)
        for k, i in enumerate(picks):
            ax = axes[r, k]
            ax.imshow(X[i].reshape(X.shape[-2], X.shape[-1]), cmap="gray_r")
            ax.set_xticks([]), ax.set_yticks([])
            if k == 0:
                ax.set_ylabel(str(c), rotation=0, labelpad=10)
    fig.suptitle("Samples, one row per class")
    fig.tight_layout()
    return fig


def class_balance(parts: Mapping[str, np.ndarray]) -> Figure:
    """Bar chart of the class counts in each part of a split.

    Args:
        parts: part name -> labels.

    Returns:
        The figure.
    """
    df = pd.concat([pd.DataFrame({"label": y, "part": name}) for name, y in parts.items()])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    sns.countplot(data=df, x="label", hue="part", ax=ax)
    ax.set_title("Class balance per split")
    fig.tight_layout()
    return fig


def learning_curves(
    histories: Mapping[str, pd.DataFrame], metrics: Sequence[str] = ("loss", "accuracy")
) -> Figure:
    """Training and validation curves of one or more runs, one panel per metric.

    Args:
        histories: run name -> history from ``train.fit``.
        metrics: "loss" and/or "accuracy".

    Returns:
        The figure.
    """
    rows = []
    for name, h in histories.items():
        for part in ("train", "val"):
            for m in metrics:
                rows.append(
                    pd.DataFrame(
                        {
                            "epoch": h["epoch"],
                            "value": h[f"{part}_{m}"],
                            "metric": m,
                            "part": part,
                            "run": name,
                        }
                    )
                )
    df = pd.concat(rows)
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 3.8), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        sns.lineplot(data=df[df.metric == m], x="epoch", y="value", hue="run", style="part", ax=ax)
        ax.set_ylabel(m)
        ax.set_title(m.capitalize())
    fig.tight_layout()
    return fig


def confusion(y_true: np.ndarray, y_pred: np.ndarray, title: str = "Confusion matrix") -> Figure:
    """Heatmap of the confusion matrix (rows: true class, columns: predicted).

    Args:
        y_true: true labels.
        y_pred: predicted labels.
        title: the title.

    Returns:
        The figure.
    """
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y_true, y_pred)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    sns.heatmap(cm, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig
