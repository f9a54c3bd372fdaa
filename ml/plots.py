"""Evaluation plots as matplotlib Figures (no pyplot, so no global state or display backend)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from sklearn.metrics import roc_curve


def roc_figure(y_true: ArrayLike, p: ArrayLike, title: str) -> Figure:
    false_positive, true_positive, _ = roc_curve(y_true, p)
    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    axes.plot(false_positive, true_positive, label="model")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    axes.legend(loc="lower right")
    return figure


def calibration_figure(y_true: ArrayLike, p: ArrayLike, title: str, bins: int = 10) -> Figure:
    """Observed CTR against mean pCTR per equal-count bin of predictions."""
    y = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(p, dtype=np.float64)
    order = np.argsort(pred, kind="stable")
    groups = [group for group in np.array_split(order, min(bins, len(order))) if group.size]
    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    axes.plot([pred[g].mean() for g in groups], [y[g].mean() for g in groups], marker="o", label="model")
    axes.set(xlabel="mean predicted CTR", ylabel="observed CTR", title=title, xlim=(0, 1), ylim=(0, 1))
    axes.legend(loc="upper left")
    return figure


def importance_figure(importance: Mapping[str, float], title: str) -> Figure:
    names = sorted(importance, key=importance.get)
    figure = Figure(figsize=(6, 0.35 * len(names) + 1.2))
    axes = figure.subplots()
    axes.barh(names, [importance[name] for name in names])
    axes.set(xlabel="holdout log-loss increase when shuffled", title=title)
    figure.tight_layout()
    return figure
