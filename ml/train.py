"""Train the CTR model families on gold/ctr_training_set, register the best, guard its promotion.

    python -m ml.train [--training-table PATH]   (default: LAKE_ROOT/gold/ctr_training_set)

One parent MLflow run (experiment ``ctr``) holds one child run per model family.
Every family is fitted on the earlier part of a time-based split and judged on the
latest events (the holdout). The family with the lowest normalized entropy is
registered as a new version of ``ctr-model`` (alias ``challenger``) and then
promoted to ``champion`` only under the rule in ``ml.registry``. The parent run
also records a constant-CTR baseline and plain logistic regression on the same
holdout, so the champion can be read against both.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec
from sklearn.inspection import permutation_importance
from sklearn.pipeline import Pipeline

from adstream.contracts import MLFLOW_EXPERIMENT, Table
from adstream.settings import Settings, get_settings
from ml import plots
from ml.features import (
    CATEGORICAL_FEATURES,
    FEATURES,
    INTEGER_FEATURES,
    LABEL,
    NULLABLE_FEATURES,
    NUMERIC_FEATURES,
    SOURCE,
    TIME_COLUMN,
    MissingFeatureError,
    check_columns,
)
from ml.metrics import evaluate
from ml.models import FAMILIES, RANDOM_STATE, SKOPS_TRUSTED_TYPES
from ml.registry import Promotion, apply_promotion, register_challenger
from ml.split import time_split
from ml.tracking import TrackingServerUnreachable, ensure_reachable, point_fluent_api_at, tracking_client

HOLDOUT_FRACTION = 0.2
BASELINE_FAMILY = "logistic_regression"  # the plain model the champion is also compared with
MODEL_NAME = "model"  # the logged model's name within its run
IMPORTANCE_REPEATS = 3


class TrainingSetError(ValueError):
    """The training set cannot train a CTR model (missing, empty, one class only, bad labels)."""


@dataclass(frozen=True)
class FamilyRun:
    family: str
    run_id: str
    model_uri: str
    model_id: str
    metrics: dict[str, float]  # on the holdout


@dataclass(frozen=True)
class TrainResult:
    parent_run_id: str
    training_table_version: int | None
    runs: dict[str, FamilyRun]
    best_family: str
    model_version: str
    constant_ctr_metrics: dict[str, float]  # predicting the training CTR for every holdout example
    promotion: Promotion

    def summary(self) -> str:
        lines = [
            f"training table version {self.training_table_version}, parent run {self.parent_run_id}",
            f"constant CTR baseline: NE {self.constant_ctr_metrics['normalized_entropy']:.4f}",
        ]
        for run in self.runs.values():
            m = run.metrics
            lines.append(
                f"{run.family}: NE {m['normalized_entropy']:.4f}, ROC AUC {m['roc_auc']:.4f}, "
                f"calibration {m['calibration']:.3f} (run {run.run_id})"
            )
        verdict = "promoted to champion" if self.promotion.decision.promote else "not promoted"
        lines.append(
            f"registered {self.best_family} as ctr-model version {self.model_version}: {verdict} "
            f"({'; '.join(self.promotion.decision.reasons)})"
        )
        return "\n".join(lines)


def _describe_labels(labels: pd.Series) -> str:
    counts = labels.value_counts().sort_index()
    return ", ".join(f"label {value}: {count} rows" for value, count in counts.items())


def check_training_set(frame: pd.DataFrame, what: str = "training set") -> None:
    """Refuses a frame no CTR model can be trained (or judged) on, before anything is fitted or logged."""
    check_columns(frame)
    if frame.empty:
        raise TrainingSetError(f"{what} is empty; nothing to train on")
    if frame[TIME_COLUMN].isna().any():
        raise TrainingSetError(f"{what} has {int(frame[TIME_COLUMN].isna().sum())} rows without {TIME_COLUMN}")
    labels = frame[LABEL]
    if labels.isna().any() or not labels.isin([0, 1]).all():
        raise TrainingSetError(f"{what} has labels other than 0/1 ({_describe_labels(labels)})")
    if labels.nunique() < 2:
        raise TrainingSetError(
            f"{what} has a single class ({_describe_labels(labels)}); a CTR model needs clicks and non-clicks"
        )


def load_training_set(location: str, storage_options: Mapping[str, str] | None = None) -> tuple[pd.DataFrame, int]:
    """The Delta table at ``location`` as a frame, with the table version that was read."""
    try:
        table = DeltaTable(location, storage_options=dict(storage_options or {}))
    except TableNotFoundError as exc:
        raise TrainingSetError(f"no Delta table at {location}: build it first (DAG feature_build)") from exc
    return table.to_pandas(), table.version()


def model_signature() -> ModelSignature:
    """The logged model's signature, from the contract rather than inferred from a sample."""
    inputs = [
        ColSpec("long" if name in INTEGER_FEATURES else "double", name, required=name not in NULLABLE_FEATURES)
        for name in NUMERIC_FEATURES
    ]
    inputs += [ColSpec("string", name, required=name not in NULLABLE_FEATURES) for name in CATEGORICAL_FEATURES]
    # pyfunc predicts with predict_proba: columns P(no click), P(click).
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([TensorSpec(np.dtype(np.float64), (-1, 2))]))


def pip_requirements() -> list[str]:
    """What the logged model needs to load, pinned to the versions it was trained with."""
    return [f"{name}=={metadata.version(name)}" for name in ("scikit-learn", "skops", "numpy", "pandas", "scipy")]


def _scalar_params(estimator: Any) -> dict[str, Any]:
    return {
        f"model.{name}": value
        for name, value in estimator.get_params(deep=False).items()
        if value is None or isinstance(value, bool | int | float | str)
    }


def _time_range(frame: pd.DataFrame) -> str:
    return f"{frame[TIME_COLUMN].min().isoformat()} .. {frame[TIME_COLUMN].max().isoformat()}"


def _source_counts(frame: pd.DataFrame) -> str:
    if SOURCE not in frame:
        return "unknown"
    return ", ".join(f"{source}={count}" for source, count in frame[SOURCE].value_counts().sort_index().items())


def _experiment_id(tracking_uri: str) -> str:
    client = tracking_client(tracking_uri)
    experiment = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
    return experiment.experiment_id if experiment else client.create_experiment(MLFLOW_EXPERIMENT)


def _permutation_importance(pipeline: Pipeline, features: pd.DataFrame, labels: np.ndarray) -> dict[str, float]:
    result = permutation_importance(
        pipeline,
        features,
        labels,
        scoring="neg_log_loss",
        n_repeats=IMPORTANCE_REPEATS,
        random_state=RANDOM_STATE,
    )
    return {name: float(value) for name, value in zip(features.columns, result.importances_mean, strict=True)}


def _train_family(
    family: str,
    build: Callable[[], Pipeline],
    experiment_id: str,
    train_set: pd.DataFrame,
    holdout: pd.DataFrame,
    common_params: Mapping[str, Any],
) -> FamilyRun:
    train_features, holdout_features = train_set[list(FEATURES)], holdout[list(FEATURES)]
    holdout_labels = holdout[LABEL].to_numpy()
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=family, nested=True, tags={"model_family": family}
    ) as run:
        pipeline = build()
        mlflow.log_params({**common_params, "model_family": family, **_scalar_params(pipeline[-1])})
        pipeline.fit(train_features, train_set[LABEL].to_numpy())
        pctr = pipeline.predict_proba(holdout_features)[:, 1]
        metrics = evaluate(holdout_labels, pctr)
        mlflow.log_metrics(metrics)
        mlflow.log_figure(plots.roc_figure(holdout_labels, pctr, f"{family}: holdout ROC"), "plots/roc_curve.png")
        mlflow.log_figure(
            plots.calibration_figure(holdout_labels, pctr, f"{family}: holdout calibration"), "plots/calibration.png"
        )
        importance = _permutation_importance(pipeline, holdout_features, holdout_labels)
        mlflow.log_dict(importance, "feature_importance.json")
        mlflow.log_figure(
            plots.importance_figure(importance, f"{family}: permutation importance"), "plots/feature_importance.png"
        )
        logged = mlflow.sklearn.log_model(
            pipeline,
            name=MODEL_NAME,
            signature=model_signature(),
            input_example=train_features.head(5),
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
            skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
            pyfunc_predict_fn="predict_proba",
            # Stated rather than inferred: inference loads the model in a subprocess, ~8 s per model.
            pip_requirements=pip_requirements(),
            code_paths=[str(Path(__file__).resolve().parent)],  # ml/, so pyfunc can rebuild our classes
        )
    return FamilyRun(family, run.info.run_id, logged.model_uri, logged.model_id, metrics)


def train(
    settings: Settings,
    frame: pd.DataFrame,
    table_version: int | None,
    *,
    training_table: str = "",
    holdout_fraction: float = HOLDOUT_FRACTION,
    families: Mapping[str, Callable[[], Pipeline]] = FAMILIES,
) -> TrainResult:
    """Trains every family on ``frame``, registers the best as challenger and applies the guarded promotion.

    Refuses (``TrainingSetError`` / ``MissingFeatureError``) before any MLflow call
    when the data cannot train or judge a model, so nothing is registered then.
    """
    if BASELINE_FAMILY not in families:
        raise ValueError(f"families must include {BASELINE_FAMILY!r}, the baseline the champion is compared with")
    check_training_set(frame)
    train_set, holdout = time_split(frame, holdout_fraction)
    check_training_set(train_set, "training part of the time split")
    check_training_set(holdout, "holdout (latest events) of the time split")
    tracking_uri = settings.mlflow_tracking_uri
    ensure_reachable(tracking_uri)
    experiment_id = _experiment_id(tracking_uri)

    train_ctr = float(train_set[LABEL].mean())
    common_params = {
        "training_table": training_table or "(in-memory frame)",
        "training_table_version": "unknown" if table_version is None else str(table_version),
        "holdout_fraction": holdout_fraction,
        "train_rows": len(train_set),
        "holdout_rows": len(holdout),
        "train_time_range": _time_range(train_set),
        "holdout_time_range": _time_range(holdout),
        "train_sources": _source_counts(train_set),
        "features": ",".join(FEATURES),
    }
    point_fluent_api_at(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name="ctr-training") as parent:
        mlflow.log_params(common_params)
        constant = evaluate(holdout[LABEL].to_numpy(), np.full(len(holdout), train_ctr))
        mlflow.log_metrics({f"constant_ctr.{name}": value for name, value in constant.items()})
        runs = {
            family: _train_family(family, build, experiment_id, train_set, holdout, common_params)
            for family, build in families.items()
        }
        for run in runs.values():
            mlflow.log_metrics({f"{run.family}.{name}": value for name, value in run.metrics.items()})
        best = min(runs.values(), key=lambda run: run.metrics["normalized_entropy"])
        mlflow.set_tag("best_family", best.family)
        version = register_challenger(tracking_uri, best.model_uri, best.model_id, best.run_id, best.family)
        promotion = apply_promotion(tracking_uri, version, holdout, parent.info.run_id)
        champion = promotion.challenger_metrics if promotion.decision.promote else promotion.champion_metrics
        if champion is not None:
            champion_ne = champion["normalized_entropy"]
            mlflow.log_metrics(
                {
                    "champion.normalized_entropy": champion_ne,
                    "champion.ne_minus_constant_ctr": champion_ne - constant["normalized_entropy"],
                    "champion.ne_minus_logistic_regression": champion_ne
                    - runs[BASELINE_FAMILY].metrics["normalized_entropy"],
                }
            )
    return TrainResult(
        parent_run_id=parent.info.run_id,
        training_table_version=table_version,
        runs=runs,
        best_family=best.family,
        model_version=version,
        constant_ctr_metrics=constant,
        promotion=promotion,
    )


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.train", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--training-table",
        default=None,
        help="path or URI of the Delta training set (default: LAKE_ROOT/gold/ctr_training_set)",
    )
    parser.add_argument("--holdout-fraction", type=float, default=HOLDOUT_FRACTION)
    args = parser.parse_args(argv)
    settings = settings or get_settings()
    if args.training_table:
        location, options = args.training_table, {}
    else:
        location, options = settings.delta_rs_location(Table.GOLD_CTR_TRAINING_SET)
    try:
        ensure_reachable(settings.mlflow_tracking_uri)
        frame, version = load_training_set(location, options)
        result = train(settings, frame, version, training_table=location, holdout_fraction=args.holdout_fraction)
    except (TrainingSetError, MissingFeatureError, TrackingServerUnreachable) as exc:
        print(f"training failed: {exc}", file=sys.stderr)
        return 1
    print(result.summary(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
