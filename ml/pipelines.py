"""The CTR model families, each an sklearn Pipeline from raw contract columns to P(click).

Every pipeline takes a frame with ``ml.features.FEATURES`` and does its own
preparation, so the logged MLflow model scores raw rows. All are deterministic
(fixed ``random_state``; no early stopping on a random validation split).

- ``logistic_regression``: median-imputed, standardized numerics + one-hot categoricals.
- ``gradient_boosted_trees``: HistGradientBoostingClassifier with native categorical splits
  on ordinal-encoded categoricals; missing numerics are handled by the trees.
- ``trees_plus_lr``: He et al. (Facebook, 2014): boosted trees turn each example into the
  leaves it falls in; a logistic regression is fitted on those one-hot leaf indices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, OneToOneFeatureMixin, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from ml.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES

RANDOM_STATE = 0
# A category value of its own for null (None, NaN or pd.NA): "unknown" is already a real gender value.
MISSING_CATEGORY = "__missing__"
# HistGradientBoosting accepts at most 255 categories per feature; rarer ones share one code.
MAX_TREE_CATEGORIES = 250


class FillMissingCategory(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Replaces every null (None, NaN, pd.NA) in categorical columns with ``MISSING_CATEGORY``.

    SimpleImputer cannot do this: on object columns it sees NaN but not None, which is
    what Delta/Arrow gives for a null string.
    """

    def fit(self, X, y=None):
        validate_data(self, X, dtype=None, ensure_all_finite=False)
        return self

    def transform(self, X):
        check_is_fitted(self)
        values = validate_data(self, X, dtype=object, ensure_all_finite=False, reset=False, copy=True)
        values[pd.isna(values)] = MISSING_CATEGORY
        return values

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.string = True
        return tags


def _categorical_one_hot() -> Pipeline:
    return Pipeline([("fill", FillMissingCategory()), ("one_hot", OneHotEncoder(handle_unknown="ignore"))])


def _categorical_codes(unknown_value: float) -> Pipeline:
    """Categories as integer codes; an unseen category becomes ``unknown_value``."""
    encoder = OrdinalEncoder(
        handle_unknown="use_encoded_value", unknown_value=unknown_value, max_categories=MAX_TREE_CATEGORIES
    )
    return Pipeline([("fill", FillMissingCategory()), ("ordinal", encoder)])


def _median_imputer() -> SimpleImputer:
    # keep_empty_features: a column that is all null in training still occupies its slot (imputed to 0).
    return SimpleImputer(strategy="median", keep_empty_features=True)


def logistic_regression(
    numeric: Sequence[str] = NUMERIC_FEATURES, categorical: Sequence[str] = CATEGORICAL_FEATURES, C: float = 1.0
) -> Pipeline:
    prepare = ColumnTransformer(
        [
            ("numeric", Pipeline([("impute", _median_imputer()), ("scale", StandardScaler())]), list(numeric)),
            ("categorical", _categorical_one_hot(), list(categorical)),
        ]
    )
    classifier = LogisticRegression(C=C, max_iter=2000, random_state=RANDOM_STATE)
    return Pipeline([("prepare", prepare), ("classifier", classifier)])


def gradient_boosted_trees(
    numeric: Sequence[str] = NUMERIC_FEATURES,
    categorical: Sequence[str] = CATEGORICAL_FEATURES,
    max_iter: int = 100,
    learning_rate: float = 0.1,
    max_leaf_nodes: int = 15,
    max_depth: int = 6,
) -> Pipeline:
    # Unseen categories become NaN, which the trees send the way missing values go.
    prepare = ColumnTransformer(
        [("numeric", "passthrough", list(numeric)), ("categorical", _categorical_codes(np.nan), list(categorical))]
    )
    first_categorical = len(numeric)
    classifier = HistGradientBoostingClassifier(
        categorical_features=list(range(first_categorical, first_categorical + len(categorical))),
        max_iter=max_iter,
        learning_rate=learning_rate,
        max_leaf_nodes=max_leaf_nodes,
        max_depth=max_depth,  # shallow trees also keep the compiled scorer's walk short
        l2_regularization=1.0,
        early_stopping=False,
        random_state=RANDOM_STATE,
    )
    return Pipeline([("prepare", prepare), ("classifier", classifier)])


class TreesPlusLogisticRegression(ClassifierMixin, BaseEstimator):
    """Boosted trees as a feature transform, logistic regression on their one-hot leaf indices.

    Both stages are fitted on the same rows, as in the paper's simplest setting. Input
    must be numeric without NaN (the pipeline imputes and ordinal-encodes first).
    """

    def __init__(
        self, n_estimators: int = 30, max_depth: int = 3, learning_rate: float = 0.1, C: float = 1.0, random_state=0
    ):
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.C = C
        self.random_state = random_state

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64)
        self.trees_ = GradientBoostingClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            random_state=self.random_state,
        ).fit(X, y)
        self.classes_ = self.trees_.classes_
        leaves = self._leaves(X)
        self.leaf_encoder_ = OneHotEncoder(handle_unknown="ignore").fit(leaves)
        self.linear_ = LogisticRegression(C=self.C, max_iter=2000, random_state=self.random_state)
        self.linear_.fit(self.leaf_encoder_.transform(leaves), y)
        return self

    def _leaves(self, X) -> np.ndarray:
        """(n_samples, n_trees) node index of the leaf each row reaches in each tree."""
        return self.trees_.apply(X)[:, :, 0]

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self.linear_.predict_proba(self.leaf_encoder_.transform(self._leaves(X)))

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def trees_plus_lr(
    numeric: Sequence[str] = NUMERIC_FEATURES,
    categorical: Sequence[str] = CATEGORICAL_FEATURES,
    n_estimators: int = 30,
    max_depth: int = 3,
) -> Pipeline:
    prepare = ColumnTransformer(
        [("numeric", _median_imputer(), list(numeric)), ("categorical", _categorical_codes(-1), list(categorical))]
    )
    classifier = TreesPlusLogisticRegression(n_estimators=n_estimators, max_depth=max_depth, random_state=RANDOM_STATE)
    return Pipeline([("prepare", prepare), ("classifier", classifier)])


# Types skops may rebuild when loading a registered model, beyond its built-in safe set. Kept in
# code (not read from the model's own metadata) so a tampered artifact cannot widen it.
SKOPS_TRUSTED_TYPES: tuple[str, ...] = (
    "functools.partial",  # HistGradientBoosting's input check, with the next entry
    "sklearn.utils.validation.check_array",
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
    f"{__name__}.FillMissingCategory",
    f"{__name__}.TreesPlusLogisticRegression",
)

FAMILIES: dict[str, Callable[[], Pipeline]] = {
    "logistic_regression": logistic_regression,
    "gradient_boosted_trees": gradient_boosted_trees,
    "trees_plus_lr": trees_plus_lr,
}
