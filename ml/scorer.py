"""A fast in-process pCTR scorer compiled from a fitted pipeline of ``ml.pipelines``.

The auction scores about 100 candidates per request. ``pipeline.predict_proba`` on a
pandas frame spends milliseconds in DataFrame construction and sklearn's input
validation; ``CompiledScorer`` reads the fitted parameters once and then scores with
a few numpy operations on the whole batch, equal to ``predict_proba(frame)[:, 1]``
to floating-point rounding (tests hold it to 1e-9).

Supported families (``ml.pipelines.FAMILIES``), all three:

- ``logistic_regression``: imputation, standardization and the one-hot weights are
  folded into a dense linear model: each categorical value maps straight to its
  weight, so no one-hot vector is ever built.
- ``gradient_boosted_trees``: HistGradientBoostingClassifier's trees are flattened
  into node arrays and walked for all rows and trees at once, one level per step.
  This reads the estimator's fitted internals (``_predictors``, ``_preprocessor``,
  ``_bin_mapper``), so it is tied to the pinned scikit-learn; the equality tests
  catch a change there.
- ``trees_plus_lr``: the boosted trees are walked the same way, each leaf carrying
  the logistic-regression weight of its one-hot column.

Input: a batch is a mapping of column name to a sequence or 1-d numpy array, one
entry per candidate (``score``), or a list of per-candidate dicts (``score_records``,
converted with plain Python). Numeric columns take numbers, with None or NaN for
missing; categorical columns take strings, with None, NaN or pd.NA for missing. Categorical
values become codes through a dict lookup per value; everything else is vectorized.
Columns not used by the model are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler

from ml.pipelines import FillMissingCategory, TreesPlusLogisticRegression

# A value no fitted encoder has seen: probes what an unseen category turns into.
_UNSEEN = "\x00unseen-category-probe"
_ABSENT = object()
_LARGEST = float(np.finfo(np.float64).max)


class UnsupportedModelError(TypeError):
    """The pipeline is not one CompiledScorer knows how to compile."""


@dataclass(frozen=True)
class Coded:
    """A categorical column given as its distinct values and, per row, an index into them.

    ``CompiledScorer.score`` encodes each distinct value once instead of once per row: a
    request's user columns are one value repeated, an ad-category column holds a few.
    """

    values: Sequence[Any]
    codes: np.ndarray

    @classmethod
    def repeat(cls, value: Any, rows: int) -> Coded:
        return cls((value,), np.zeros(rows, dtype=np.intp))

    def __len__(self) -> int:
        return len(self.codes)

    def tolist(self) -> list[Any]:
        return [self.values[code] for code in self.codes.tolist()]


@dataclass(frozen=True)
class _CategoryLookup:
    """One categorical column: value -> the number the fitted preprocessing turns it into."""

    name: str
    table: dict[Any, float]
    missing: float  # for None / NaN
    unseen: float

    def encode(self, values: Sequence[Any] | np.ndarray | Coded) -> list[float] | np.ndarray:
        if isinstance(values, Coded):
            return np.asarray(self.encode(values.values), dtype=np.float64)[values.codes]
        get, absent, missing, unseen = self.table.get, _ABSENT, self.missing, self.unseen
        # None and pd.NA are keys of the table; any float NaN is the value that differs from itself.
        return [code if (code := get(v, absent)) is not absent else (missing if v != v else unseen) for v in values]


@dataclass(frozen=True)
class _Numerics:
    """The numeric columns: optional fill for missing values, then optional (x - shift) / scale."""

    names: tuple[str, ...]
    fill: np.ndarray | None
    shift: np.ndarray | None
    scale: np.ndarray | None

    def encode(self, batch: Mapping[str, Any], rows: int) -> np.ndarray:
        values = np.empty((rows, len(self.names)))
        for j, name in enumerate(self.names):
            values[:, j] = np.asarray(batch[name], dtype=np.float64)
        if self.fill is not None:
            values = np.where(np.isnan(values), self.fill, values)
        if self.shift is not None:
            values -= self.shift
        if self.scale is not None:
            values /= self.scale
        return values


@dataclass(frozen=True)
class _Linear:
    weights: np.ndarray
    bias: float

    def raw(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weights + self.bias


@dataclass(frozen=True)
class _Tree:
    """One fitted tree in its source numbering (root 0); ``feature`` indexes the scorer's matrix."""

    feature: np.ndarray
    threshold: np.ndarray  # numeric split: go left when x <= threshold
    left: np.ndarray
    right: np.ndarray
    missing_left: np.ndarray  # where NaN goes
    is_leaf: np.ndarray
    value: np.ndarray
    category_left: dict[int, np.ndarray]  # categorical split node -> (257,) bool by code; 256 = missing


@dataclass(frozen=True)
class _TreeEnsemble:
    """Every tree's nodes in flat arrays, walked for all rows and trees at once, one level per step.

    Three layout choices keep a step to a few numpy operations:
    - children are adjacent, so the next node is ``first_child + went_right``;
    - NaN never reaches a comparison: each numeric split reads a copy of its column
      where NaN is -inf (missing goes left) or +inf (missing goes right). Values are
      capped at the largest finite float and so is a threshold of +inf
      (HistGradientBoosting's "missing or not" split), so NaN still lands right of
      every threshold and x <= threshold keeps its meaning;
    - categorical splits are decided once per batch into 0/1 columns split at 0.5.
    A leaf is its own first child with threshold +inf, so levels past it change nothing.
    """

    roots: np.ndarray
    column: np.ndarray  # per node, the column of the extended matrix it compares
    threshold: np.ndarray
    first_child: np.ndarray
    value: np.ndarray  # leaf values; 0 for internal nodes
    split_feature: np.ndarray  # (n_categorical_splits,) matrix column each categorical split reads
    split_right: np.ndarray  # (n_categorical_splits * 257,) 1.0 where split s sends code k right, at s * 257 + k
    depth: int
    bias: float
    float32_inputs: bool  # sklearn's DecisionTree compares the inputs as float32

    @classmethod
    def build(cls, trees: Sequence[_Tree], width: int, bias: float, float32_inputs: bool) -> _TreeEnsemble:
        column, threshold, first_child, value, roots = [], [], [], [], []
        split_feature, split_left = [], []
        depth = 0
        for tree in trees:
            base = len(column)
            # Breadth-first renumbering: each internal node's two children get consecutive ids.
            order, new_id, level = [0], {0: 0}, {0: 0}
            for old in order:
                if not tree.is_leaf[old]:
                    for child in (int(tree.left[old]), int(tree.right[old])):
                        new_id[child] = len(order)
                        level[child] = level[old] + 1
                        order.append(child)
            depth = max(depth, *level.values())
            roots.append(base)
            for old in order:
                if tree.is_leaf[old]:
                    column.append(0)
                    threshold.append(np.inf)
                    first_child.append(base + new_id[old])
                    value.append(float(tree.value[old]))
                    continue
                if old in tree.category_left:
                    column.append(2 * width + len(split_feature))
                    threshold.append(0.5)
                    split_feature.append(int(tree.feature[old]))
                    split_left.append(tree.category_left[old])
                else:
                    column.append(int(tree.feature[old]) + (width if tree.missing_left[old] else 0))
                    threshold.append(min(float(tree.threshold[old]), _LARGEST))
                first_child.append(base + new_id[int(tree.left[old])])
                value.append(0.0)
        return cls(
            roots=np.asarray(roots, dtype=np.intp),
            column=np.asarray(column, dtype=np.intp),
            threshold=np.asarray(threshold, dtype=np.float64),
            first_child=np.asarray(first_child, dtype=np.intp),
            value=np.asarray(value, dtype=np.float64),
            split_feature=np.asarray(split_feature, dtype=np.intp),
            split_right=(~np.asarray(split_left, dtype=bool).reshape(len(split_left), 257)).astype(np.float64).ravel(),
            depth=depth,
            bias=bias,
            float32_inputs=float32_inputs,
        )

    def raw(self, features: np.ndarray) -> np.ndarray:
        if self.float32_inputs:
            features = features.astype(np.float32).astype(np.float64)
        rows, width = features.shape
        missing = np.isnan(features)
        capped = np.minimum(features, _LARGEST)  # +inf input behaves like it does against a +inf threshold
        extended = np.empty((rows, 2 * width + self.split_feature.size))
        extended[:, :width] = np.where(missing, np.inf, capped)
        extended[:, width : 2 * width] = np.where(missing, -np.inf, capped)
        if self.split_feature.size:
            # Like sklearn: NaN and codes outside 0..255 are missing (index 256).
            codes = np.where((features >= 0) & (features <= 255), features, 256).astype(np.intp)
            split_start = np.arange(self.split_feature.size) * 257
            extended[:, 2 * width :] = np.take(
                self.split_right, np.take(codes, self.split_feature, axis=1) + split_start
            )
        # np.take rather than fancy indexing: same result, less overhead per call.
        flat = extended.ravel()
        row_start = (np.arange(rows) * extended.shape[1])[:, None]
        node = np.broadcast_to(self.roots, (rows, self.roots.size))
        for _ in range(self.depth):
            x = np.take(flat, np.take(self.column, node) + row_start)
            node = np.take(self.first_child, node) + (x > np.take(self.threshold, node))
        return np.take(self.value, node).sum(axis=1) + self.bias


class CompiledScorer:
    """pCTR for a batch of candidates, equal to the source pipeline's ``predict_proba(frame)[:, 1]``."""

    kind = "numpy"  # which scorer serves (``ml.native.NativeScorer`` says "native")

    def __init__(
        self, family: str, numerics: _Numerics, categories: tuple[_CategoryLookup, ...], head: _Linear | _TreeEnsemble
    ):
        self.family = family
        self._numerics = numerics
        self._categories = categories
        self._head = head
        # Column order of the matrix the head reads: numerics first, then categoricals.
        self.features: tuple[str, ...] = numerics.names + tuple(lookup.name for lookup in categories)

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline) -> CompiledScorer:
        """Compiles a fitted pipeline built by ``ml.pipelines``; raises ``UnsupportedModelError`` otherwise."""
        prepare, classifier = _split_pipeline(pipeline)
        if isinstance(classifier, LogisticRegression):
            return _compile_logistic_regression(prepare, classifier)
        if isinstance(classifier, HistGradientBoostingClassifier):
            return _compile_hist_gradient_boosting(prepare, classifier)
        if isinstance(classifier, TreesPlusLogisticRegression):
            return _compile_trees_plus_lr(prepare, classifier)
        raise UnsupportedModelError(f"no compiler for {type(classifier).__name__}")

    @property
    def head(self) -> _Linear | _TreeEnsemble:
        """What scores the encoded matrix; ``ml.native`` compiles a tree ensemble to native code."""
        return self._head

    def encode(self, batch: Mapping[str, Sequence[Any] | np.ndarray | Coded]) -> np.ndarray:
        """The (rows, len(features)) float64 matrix the head reads, columns in ``features`` order: numerics
        as the pipeline prepares them, then each categorical value as the number its lookup gives."""
        absent = [name for name in self.features if name not in batch]
        if absent:
            raise KeyError(f"batch lacks feature column(s) {absent}")
        rows = len(batch[self.features[0]])
        matrix = np.empty((rows, len(self.features)))
        width = len(self._numerics.names)
        matrix[:, :width] = self._numerics.encode(batch, rows)
        for j, lookup in enumerate(self._categories, start=width):
            matrix[:, j] = lookup.encode(batch[lookup.name])
        return matrix

    def score(self, batch: Mapping[str, Sequence[Any] | np.ndarray | Coded]) -> np.ndarray:
        """pCTRs, one per candidate, for a mapping of column name -> values (one per candidate); a
        categorical column may come as ``Coded``."""
        return expit(self._head.raw(self.encode(batch)))

    def score_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """pCTRs for a list of per-candidate dicts; an absent key counts as missing."""
        return self.score({name: [record.get(name) for record in records] for name in self.features})


def _split_pipeline(pipeline: Pipeline) -> tuple[ColumnTransformer, Any]:
    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
        raise UnsupportedModelError("expected Pipeline([('prepare', ColumnTransformer), ('classifier', …)])")
    (_, prepare), (_, classifier) = pipeline.steps
    if not isinstance(prepare, ColumnTransformer):
        raise UnsupportedModelError(f"first step must be a ColumnTransformer, got {type(prepare).__name__}")
    return prepare, classifier


def _branches(prepare: ColumnTransformer) -> tuple[tuple[Any, list[str]], tuple[Any, list[str]]]:
    """The (numeric, categorical) transformers and their columns, in output order."""
    fitted = {name: (transformer, list(columns)) for name, transformer, columns in prepare.transformers_}
    if set(fitted) - {"numeric", "categorical", "remainder"} or fitted.get("remainder", ("drop",))[0] != "drop":
        raise UnsupportedModelError(f"unexpected ColumnTransformer branches {sorted(fitted)}")
    order = [name for name, _, _ in prepare.transformers_ if name != "remainder"]
    if order != ["numeric", "categorical"]:
        raise UnsupportedModelError(f"expected branches ['numeric', 'categorical'], got {order}")
    return fitted["numeric"], fitted["categorical"]


def _is_identity(step: Any) -> bool:
    # A fitted ColumnTransformer holds "passthrough" as a FunctionTransformer without a function.
    return step == "passthrough" or (isinstance(step, FunctionTransformer) and step.func is None)


def _compile_numerics(transformer: Any, names: list[str]) -> _Numerics:
    steps = transformer.steps if isinstance(transformer, Pipeline) else [(None, transformer)]
    fill = shift = scale = None
    for _, step in steps:
        if _is_identity(step):
            continue
        if isinstance(step, SimpleImputer) and fill is None and shift is None and scale is None:
            if not (np.isnan(step.missing_values) and step.keep_empty_features and not step.add_indicator):
                raise UnsupportedModelError("SimpleImputer must impute NaN, keep empty features, add no indicator")
            fill = np.asarray(step.statistics_, dtype=np.float64)
        elif isinstance(step, StandardScaler) and shift is None and scale is None:
            shift = None if step.mean_ is None else np.asarray(step.mean_, dtype=np.float64)
            scale = None if step.scale_ is None else np.asarray(step.scale_, dtype=np.float64)
        else:
            raise UnsupportedModelError(f"numeric step {step!r} is not supported")
    return _Numerics(tuple(names), fill, shift, scale)


def _probe(transformer: Any, names: list[str], column: int, values: list[Any]) -> Any:
    """``transformer`` applied to rows that vary ``values`` in one column; other columns are unseen."""
    probe = pd.DataFrame({name: [_UNSEEN] * len(values) for name in names}, dtype=object)
    probe[names[column]] = pd.Series(values, dtype=object)
    return transformer.transform(probe)


def _no_infrequent(encoder: OneHotEncoder) -> bool:
    return encoder.min_frequency is None and encoder.max_categories is None


def _categorical_encoder(transformer: Any) -> OneHotEncoder | OrdinalEncoder:
    if not (
        isinstance(transformer, Pipeline)
        and len(transformer.steps) == 2
        and isinstance(transformer.steps[0][1], FillMissingCategory)
        and isinstance(transformer.steps[1][1], OneHotEncoder | OrdinalEncoder)
    ):
        raise UnsupportedModelError("categorical branch must be Pipeline([FillMissingCategory, encoder])")
    return transformer.steps[1][1]


def _lookups(transformer: Any, names: list[str], outputs: Any) -> tuple[_CategoryLookup, ...]:
    """Per column, what each seen value, a missing value and an unseen value turn into.

    ``outputs(column, transformed)`` reduces the transformed probe rows to one number per row.
    """
    encoder = _categorical_encoder(transformer)
    lookups = []
    for column, name in enumerate(names):
        seen = list(encoder.categories_[column])
        if _UNSEEN in seen:
            raise UnsupportedModelError(f"column {name!r} has a category equal to the probe value")
        encoded = outputs(column, _probe(transformer, names, column, [*seen, None, _UNSEEN]))
        table = dict(zip(seen, encoded[: len(seen)].tolist(), strict=True))
        table[None] = table[pd.NA] = float(encoded[-2])
        lookups.append(_CategoryLookup(name, table, missing=float(encoded[-2]), unseen=float(encoded[-1])))
    return tuple(lookups)


def _compile_logistic_regression(prepare: ColumnTransformer, classifier: LogisticRegression) -> CompiledScorer:
    (numeric, numeric_names), (categorical, categorical_names) = _branches(prepare)
    encoder = _categorical_encoder(categorical)
    if not (encoder.handle_unknown == "ignore" and encoder.drop is None and _no_infrequent(encoder)):
        raise UnsupportedModelError("one-hot encoder must ignore unknowns, drop nothing, have no infrequent group")
    if classifier.coef_.shape[0] != 1:
        raise UnsupportedModelError("only binary logistic regression is supported")
    coef = classifier.coef_[0]
    numeric_coef = coef[prepare.output_indices_["numeric"]]
    categorical_coef = coef[prepare.output_indices_["categorical"]]

    def weight_of(_: int, one_hot: Any) -> np.ndarray:
        # Unseen columns encode to all zeros, so the row's weight is that of the probed value.
        return np.asarray(one_hot @ categorical_coef).ravel()

    lookups = _lookups(categorical, categorical_names, weight_of)
    weights = np.concatenate([numeric_coef, np.ones(len(lookups))])
    head = _Linear(weights, float(classifier.intercept_[0]))
    return CompiledScorer("logistic_regression", _compile_numerics(numeric, numeric_names), lookups, head)


def _ordinal_lookups(transformer: Any, names: list[str]) -> tuple[_CategoryLookup, ...]:
    return _lookups(transformer, names, lambda column, codes: np.asarray(codes, dtype=np.float64)[:, column])


def _bitset_contains(bitset: np.ndarray, codes: np.ndarray) -> np.ndarray:
    return ((bitset[codes // 32] >> (codes % 32).astype(np.uint32)) & 1).astype(bool)


def _compile_hist_gradient_boosting(
    prepare: ColumnTransformer, classifier: HistGradientBoostingClassifier
) -> CompiledScorer:
    (numeric, numeric_names), (categorical, categorical_names) = _branches(prepare)
    if classifier.n_trees_per_iteration_ != 1:
        raise UnsupportedModelError("only binary gradient boosting is supported")
    n_numeric = len(numeric_names)
    width = n_numeric + len(categorical_names)
    categorical_inputs = np.arange(width) >= n_numeric
    if classifier.is_categorical_ is None or not np.array_equal(classifier.is_categorical_, categorical_inputs):
        raise UnsupportedModelError("expected exactly the categorical branch's columns as categorical features")
    # The estimator re-encodes its categorical inputs (our codes) to codes of its own and moves them first.
    inner = classifier._preprocessor
    if list(inner.output_indices_)[:2] != ["encoder", "numerical"] or inner.output_indices_["encoder"].start != 0:
        raise UnsupportedModelError("unexpected internal layout of HistGradientBoostingClassifier")
    inner_categories = inner.named_transformers_["encoder"].categories_

    lookups = []
    for column, lookup in enumerate(_ordinal_lookups(categorical, categorical_names)):
        known = np.asarray(inner_categories[column], dtype=np.float64)

        def inner_code(code: float, known: np.ndarray = known) -> float:
            hit = np.flatnonzero(known == code)
            return float(hit[0]) if hit.size else np.nan

        table = {value: inner_code(code) for value, code in lookup.table.items()}
        lookups.append(_CategoryLookup(lookup.name, table, inner_code(lookup.missing), inner_code(lookup.unseen)))

    # Our matrix is [numerics | categoricals]; the trees index [categoricals | numerics].
    our_column = np.concatenate([np.arange(n_numeric, width), np.arange(n_numeric)])
    known_bitsets, bitset_of_feature = classifier._bin_mapper.make_known_categories_bitsets()
    codes = np.arange(256)
    trees = []
    for (predictor,) in classifier._predictors:
        nodes = predictor.nodes
        is_leaf = nodes["is_leaf"].astype(bool)
        missing_left = nodes["missing_go_to_left"].astype(bool)
        category_left = {}
        for node in np.flatnonzero(nodes["is_categorical"].astype(bool) & ~is_leaf):
            goes_left = _bitset_contains(predictor.raw_left_cat_bitsets[nodes["bitset_idx"][node]], codes)
            known = _bitset_contains(known_bitsets[bitset_of_feature[nodes["feature_idx"][node]]], codes)
            # Unknown categories and missing values go where the split sends missing values.
            by_code = np.append(np.where(known, goes_left, missing_left[node]), missing_left[node])
            category_left[int(node)] = by_code
        trees.append(
            _Tree(
                feature=our_column[nodes["feature_idx"]],
                threshold=nodes["num_threshold"],
                left=nodes["left"],
                right=nodes["right"],
                missing_left=missing_left,
                is_leaf=is_leaf,
                value=nodes["value"],
                category_left=category_left,
            )
        )
    bias = float(classifier._baseline_prediction.ravel()[0])
    head = _TreeEnsemble.build(trees, width, bias, float32_inputs=False)
    return CompiledScorer("gradient_boosted_trees", _compile_numerics(numeric, numeric_names), tuple(lookups), head)


def _compile_trees_plus_lr(prepare: ColumnTransformer, classifier: TreesPlusLogisticRegression) -> CompiledScorer:
    (numeric, numeric_names), (categorical, categorical_names) = _branches(prepare)
    numerics = _compile_numerics(numeric, numeric_names)
    if numerics.fill is None:
        raise UnsupportedModelError("trees_plus_lr needs imputed numerics (its trees never saw NaN)")
    encoder = classifier.leaf_encoder_
    if not (encoder.handle_unknown == "ignore" and encoder.drop is None and _no_infrequent(encoder)):
        raise UnsupportedModelError("leaf encoder must ignore unknowns, drop nothing, have no infrequent group")
    coef = classifier.linear_.coef_[0]
    trees, column = [], 0
    for tree_index, (estimator,) in enumerate(classifier.trees_.estimators_):
        tree = estimator.tree_
        # Each leaf carries the weight of its one-hot column; a leaf no training row reached weighs 0.
        value = np.zeros(tree.node_count)
        leaves = encoder.categories_[tree_index].astype(np.intp)
        value[leaves] = coef[column : column + leaves.size]
        column += leaves.size
        trees.append(
            _Tree(
                feature=tree.feature,
                threshold=tree.threshold,
                left=tree.children_left,
                right=tree.children_right,
                missing_left=tree.missing_go_to_left.astype(bool),
                is_leaf=tree.children_left < 0,
                value=value,
                category_left={},
            )
        )
    width = len(numeric_names) + len(categorical_names)
    head = _TreeEnsemble.build(trees, width, float(classifier.linear_.intercept_[0]), float32_inputs=True)
    return CompiledScorer("trees_plus_lr", numerics, _ordinal_lookups(categorical, categorical_names), head)
