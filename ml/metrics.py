"""Offline CTR metrics on a labelled set: pure numpy/sklearn functions of (y_true, pCTR).

Normalized entropy (He et al., "Practical Lessons from Predicting Clicks on Ads at
Facebook", 2014) is the log loss divided by the log loss of always predicting the
base CTR. Here the base CTR is that **of the evaluated set itself** (e.g. the
holdout), so a constant prediction at the holdout's own CTR scores exactly 1, lower
is better, and two models scored on the same holdout share the same denominator:
comparing their NE is comparing their log loss.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score, roc_auc_score

# Predictions are clipped to [EPS, 1 - EPS] so one confident mistake costs a large but finite loss.
EPS = 1e-15


def _as_arrays(y_true: ArrayLike, p: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(p, dtype=np.float64)
    if y.shape != pred.shape or y.ndim != 1:
        raise ValueError(f"y_true and p must be 1-d and of equal length, got {y.shape} and {pred.shape}")
    if y.size == 0:
        raise ValueError("cannot evaluate on an empty set")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y_true must be 0/1 labels")
    if np.isnan(pred).any():
        raise ValueError("predictions contain NaN")
    return y, pred


def _single_class(y: np.ndarray) -> bool:
    return y.min() == y.max()


def log_loss(y_true: ArrayLike, p: ArrayLike) -> float:
    """Mean binary cross-entropy in nats."""
    y, pred = _as_arrays(y_true, p)
    pred = np.clip(pred, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(pred) + (1 - y) * np.log1p(-pred)))


def binary_entropy(rate: float) -> float:
    """Entropy in nats of a Bernoulli(rate): the log loss of always predicting ``rate``."""
    if rate <= 0 or rate >= 1:
        return 0.0
    return -(rate * math.log(rate) + (1 - rate) * math.log1p(-rate))


def normalized_entropy(y_true: ArrayLike, p: ArrayLike) -> float:
    """Log loss / entropy of the evaluated set's own CTR; NaN when that set has a single class."""
    y, _ = _as_arrays(y_true, p)
    denominator = binary_entropy(float(y.mean()))
    if denominator == 0:
        return math.nan
    return log_loss(y_true, p) / denominator


def calibration(y_true: ArrayLike, p: ArrayLike) -> float:
    """Predicted clicks / observed clicks (1.0 is calibrated); NaN when there are no clicks."""
    y, pred = _as_arrays(y_true, p)
    clicks = y.sum()
    if clicks == 0:
        return math.nan
    return float(pred.sum() / clicks)


def roc_auc(y_true: ArrayLike, p: ArrayLike) -> float:
    """Area under the ROC curve; NaN when the set has a single class."""
    y, pred = _as_arrays(y_true, p)
    return math.nan if _single_class(y) else float(roc_auc_score(y, pred))


def pr_auc(y_true: ArrayLike, p: ArrayLike) -> float:
    """Area under the precision-recall curve as average precision (step-wise, no interpolation)."""
    y, pred = _as_arrays(y_true, p)
    return math.nan if _single_class(y) else float(average_precision_score(y, pred))


def evaluate(y_true: ArrayLike, p: ArrayLike) -> dict[str, float]:
    """Every metric above, plus the evaluated set's base CTR and size."""
    y, pred = _as_arrays(y_true, p)
    return {
        "roc_auc": roc_auc(y, pred),
        "log_loss": log_loss(y, pred),
        "normalized_entropy": normalized_entropy(y, pred),
        "calibration": calibration(y, pred),
        "pr_auc": pr_auc(y, pred),
        "base_ctr": float(y.mean()),
        "examples": float(y.size),
    }
