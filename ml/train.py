"""Train the CTR model families on gold/ctr_training_set, register the best, guard its promotion.

    adstream train [--training-table PATH] [--dataset NAME] [--skip-promotion]
    adstream promote [--training-run RUN_ID]   (the promotion step on its own)

One parent MLflow run (experiment ``ctr``) holds one child run per model family. Every run's inputs are
the training part and the holdout as datasets whose source is the Delta table at the version read, so a
registered version leads to the exact table version it learned from; each family's holdout metrics are
logged on its logged model (and the holdout dataset), so the model's page shows them too.
Every family is fitted on the earlier part of a time-based split and judged on the
latest events (the holdout). The family with the lowest normalized entropy is
registered as a new version of ``ctr-model`` (alias ``challenger``) and then
promoted to ``champion`` only under the rule in ``ml.registry``. The parent run
also records a constant-CTR baseline and plain logistic regression on the same
holdout, so the champion can be read against both. Where the training set says
which Kaggle dataset (or the auction log) an example came from, every family's
holdout metrics are also logged per dataset (``advertising.roc_auc``, …).

``--dataset advertising`` trains on one dataset's examples alone: an evaluation run
that registers nothing, since its holdout is not the one champions are judged on.
"""

from __future__ import annotations

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
from mlflow.data.dataset import Dataset
from mlflow.entities import Run
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec
from sklearn.inspection import permutation_importance
from sklearn.pipeline import Pipeline

from adstream.contracts import Table
from adstream.settings import Settings
from ml import plots
from ml.calibrate import latest_calibration
from ml.calibration import CALIBRATION_ARTIFACT, Calibration, fit_platt, prior_correction
from ml.datasets import delta_dataset
from ml.features import (
    CATEGORICAL_FEATURES,
    DATASET,
    FEATURES,
    INTEGER_FEATURES,
    LABEL,
    LOGGED_SOURCE,
    NULLABLE_FEATURES,
    NUMERIC_FEATURES,
    SOURCE,
    TIME_COLUMN,
    check_columns,
)
from ml.metrics import evaluate
from ml.pipelines import FAMILIES, RANDOM_STATE, SKOPS_TRUSTED_TYPES
from ml.registry import Promotion, apply_promotion, register_challenger, registered_calibration
from ml.split import split_per_source
from ml.tracking import (
    ensure_reachable,
    experiment_id,
    point_fluent_api_at,
    search_ctr_runs,
    tracking_client,
)

HOLDOUT_FRACTION = 0.2
REGISTERED_VERSION_TAG = "registered_version"  # on the parent run: the ctr-model version it produced
BASELINE_FAMILY = "logistic_regression"  # the plain model the champion is also compared with
LOGGED_MIN_CLICKS = 50  # logged clicks in the training part before calibration is fitted on them
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
class Candidate:
    """What one training produced before promotion: the family runs and, unless evaluation only, a version."""

    parent_run_id: str
    training_table_version: int | None
    runs: dict[str, FamilyRun]
    best_family: str
    model_version: str | None  # None for an evaluation-only run
    constant_ctr_metrics: dict[str, float]


@dataclass(frozen=True)
class TrainResult(Candidate):
    """A training that registered a version and applied the guarded promotion to it."""

    promotion: Promotion

    def summary(self) -> str:
        return f"{candidate_summary(self)}\n{promotion_summary(self.promotion)}"


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


def load_training_set(
    location: str, storage_options: Mapping[str, str] | None = None, version: int | None = None
) -> tuple[pd.DataFrame, int]:
    """The Delta table at ``location`` (at ``version``, or the latest) as a frame, with the version read."""
    try:
        table = DeltaTable(location, storage_options=dict(storage_options or {}), version=version)
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


def training_calibration(pipeline: Pipeline, train_set: pd.DataFrame, prior_ctr: float) -> Calibration:
    """The calibration a model is registered with (``ml.calibration``), from its training part only.

    The prior correction from the training part's click rate to ``prior_ctr``; and where that part
    holds logged traffic with LOGGED_MIN_CLICKS clicks, a Platt map fitted on it instead, centred on
    the correction toward the logged click rate: the model is then calibrated on the traffic it serves.
    """
    prior = prior_correction("", float(train_set[LABEL].mean()), prior_ctr)
    if SOURCE not in train_set:
        return prior
    logged = train_set[train_set[SOURCE] == LOGGED_SOURCE]
    clicks = int(logged[LABEL].sum())
    if clicks < LOGGED_MIN_CLICKS or clicks == len(logged):
        return prior
    centre = prior_correction("", prior.train_positive_rate or 0.5, clicks / len(logged))
    scores = pipeline.predict_proba(logged[list(FEATURES)])[:, 1]
    fitted_at = logged[TIME_COLUMN].max().to_pydatetime()
    return fit_platt(scores, logged[LABEL].to_numpy(), centre, fitted_at=fitted_at)


@dataclass(frozen=True)
class TrainingData:
    """The two parts of the training table a training logs as its inputs (None: an in-memory frame)."""

    training: Dataset | None
    holdout: Dataset | None

    def log(self) -> None:
        """Logs both as inputs of the active run."""
        if self.training is not None and self.holdout is not None:
            mlflow.log_input(self.training, context="training")
            mlflow.log_input(self.holdout, context="evaluation")


def training_data(
    train_set: pd.DataFrame, holdout: pd.DataFrame, training_table: str, table_version: int | None
) -> TrainingData:
    """The training part and holdout as MLflow datasets sourced from ``training_table`` at ``table_version``."""
    if not training_table or table_version is None:
        return TrainingData(None, None)

    def dataset(frame: pd.DataFrame) -> Dataset:
        return delta_dataset(frame, training_table, table_version, Table.GOLD_CTR_TRAINING_SET.value, LABEL)

    return TrainingData(dataset(train_set), dataset(holdout))


def _train_family(
    family: str,
    build: Callable[[], Pipeline],
    experiment_id: str,
    train_set: pd.DataFrame,
    holdout: pd.DataFrame,
    data: TrainingData,
    common_params: Mapping[str, Any],
    prior_ctr: float,
) -> FamilyRun:
    train_features, holdout_features = train_set[list(FEATURES)], holdout[list(FEATURES)]
    holdout_labels = holdout[LABEL].to_numpy()
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=family, nested=True, tags={"model_family": family}
    ) as run:
        pipeline = build()
        mlflow.log_params({**common_params, "model_family": family, **_scalar_params(pipeline[-1])})
        data.log()
        pipeline.fit(train_features, train_set[LABEL].to_numpy())
        pctr = pipeline.predict_proba(holdout_features)[:, 1]
        metrics = {**evaluate(holdout_labels, pctr), **_dataset_metrics(holdout, pctr)}
        calibration = training_calibration(pipeline, train_set, prior_ctr)
        mlflow.log_text(calibration.to_json(), CALIBRATION_ARTIFACT)
        mlflow.log_params({"calibration.kind": calibration.kind, "calibration.prior_ctr": prior_ctr})
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
        # On the run and on its logged model, judged on the holdout dataset.
        mlflow.log_metrics(metrics, model_id=logged.model_id, dataset=data.holdout)
    return FamilyRun(family, run.info.run_id, logged.model_uri, logged.model_id, metrics)


def _dataset_metrics(frame: pd.DataFrame, pctr: np.ndarray) -> dict[str, float]:
    """Holdout metrics per dataset the examples came from (only where the slice has both classes)."""
    if DATASET not in frame:
        return {}
    metrics = {}
    labels = frame[LABEL].to_numpy()
    for dataset in sorted(frame[DATASET].dropna().unique()):
        in_slice = (frame[DATASET] == dataset).to_numpy()
        if np.unique(labels[in_slice]).size == 2:
            metrics.update(
                {f"{dataset}.{name}": value for name, value in evaluate(labels[in_slice], pctr[in_slice]).items()}
            )
    return metrics


def fit_and_register(
    settings: Settings,
    frame: pd.DataFrame,
    table_version: int | None,
    *,
    training_table: str = "",
    holdout_fraction: float = HOLDOUT_FRACTION,
    families: Mapping[str, Callable[[], Pipeline]] = FAMILIES,
    register: bool = True,
    dataset: str | None = None,
) -> tuple[Candidate, pd.DataFrame]:
    """Trains and evaluates every family; registers the best as ``challenger`` (unless ``register`` is False).

    Returns the candidate and the holdout it was judged on. Refuses
    (``TrainingSetError`` / ``MissingFeatureError``) before any MLflow call when the
    data cannot train or judge a model, so nothing is registered then.
    """
    if BASELINE_FAMILY not in families:
        raise ValueError(f"families must include {BASELINE_FAMILY!r}, the baseline the champion is compared with")
    if dataset is not None:
        check_columns(frame, (DATASET,))
        frame = frame[frame[DATASET] == dataset]
    what = "training set" if dataset is None else f"training set (dataset {dataset!r} only)"
    check_training_set(frame, what)
    train_set, holdout = split_per_source(frame, holdout_fraction)
    check_training_set(train_set, "training part of the time split")
    check_training_set(holdout, "holdout (latest events) of the time split")
    tracking_uri = settings.mlflow_tracking_uri
    ensure_reachable(tracking_uri)
    experiment = experiment_id(tracking_uri)

    train_ctr = float(train_set[LABEL].mean())
    common_params = {
        "training_table": training_table or "(in-memory frame)",
        "training_table_version": "unknown" if table_version is None else str(table_version),
        "holdout_fraction": holdout_fraction,
        "dataset_filter": dataset or "all",
        "train_rows": len(train_set),
        "holdout_rows": len(holdout),
        "train_time_range": _time_range(train_set),
        "holdout_time_range": _time_range(holdout),
        "train_sources": _source_counts(train_set),
        "features": ",".join(FEATURES),
    }
    data = training_data(train_set, holdout, training_table, table_version)
    point_fluent_api_at(tracking_uri)
    with mlflow.start_run(experiment_id=experiment, run_name="ctr-training") as parent:
        mlflow.log_params(common_params)
        mlflow.set_tag("run_kind", "training" if register else "evaluation")
        data.log()
        constant = evaluate(holdout[LABEL].to_numpy(), np.full(len(holdout), train_ctr))
        mlflow.log_metrics({f"constant_ctr.{name}": value for name, value in constant.items()})
        runs = {
            family: _train_family(
                family, build, experiment, train_set, holdout, data, common_params, settings.ctr_prior
            )
            for family, build in families.items()
        }
        for run in runs.values():
            mlflow.log_metrics({f"{run.family}.{name}": value for name, value in run.metrics.items()})
        best = min(runs.values(), key=lambda run: run.metrics["normalized_entropy"])
        mlflow.set_tag("best_family", best.family)
        version = None
        if register:
            version = register_challenger(tracking_uri, best.model_uri, best.model_id, best.run_id, best.family)
            mlflow.set_tag(REGISTERED_VERSION_TAG, version)
    candidate = Candidate(
        parent_run_id=parent.info.run_id,
        training_table_version=table_version,
        runs=runs,
        best_family=best.family,
        model_version=version,
        constant_ctr_metrics=constant,
    )
    return candidate, holdout


def promote(settings: Settings, parent_run_id: str, model_version: str, holdout: pd.DataFrame) -> Promotion:
    """The guarded promotion of ``model_version`` on ``holdout`` (``ml.registry``); logs the decision and
    the champion's standing to the training run: on logged traffic its NE, calibration and AUC there;
    on the bootstrap holdout its NE against the constant-CTR baseline and plain logistic regression."""
    tracking_uri = settings.mlflow_tracking_uri

    def champion_calibration(version: str) -> Calibration:
        # The map serving applies now: the newest online one, else the registered one.
        return latest_calibration(settings, version) or registered_calibration(tracking_uri, version)

    promotion = apply_promotion(tracking_uri, model_version, holdout, parent_run_id, champion_calibration)
    champion = promotion.challenger_metrics if promotion.decision.promote else promotion.champion_metrics
    if champion is not None and promotion.judged_on == "logged":
        client = tracking_client(tracking_uri)
        for name in ("normalized_entropy", "calibration", "roc_auc"):
            client.log_metric(parent_run_id, f"champion.logged_{name}", champion[name])
    elif champion is not None:
        client = tracking_client(tracking_uri)
        logged = client.get_run(parent_run_id).data.metrics
        champion_ne = champion["normalized_entropy"]
        for name, value in {
            "champion.normalized_entropy": champion_ne,
            "champion.ne_minus_constant_ctr": champion_ne - logged["constant_ctr.normalized_entropy"],
            "champion.ne_minus_logistic_regression": champion_ne - logged[f"{BASELINE_FAMILY}.normalized_entropy"],
        }.items():
            client.log_metric(parent_run_id, name, value)
    return promotion


def train(
    settings: Settings,
    frame: pd.DataFrame,
    table_version: int | None,
    *,
    training_table: str = "",
    holdout_fraction: float = HOLDOUT_FRACTION,
    families: Mapping[str, Callable[[], Pipeline]] = FAMILIES,
) -> TrainResult:
    """Trains every family on ``frame``, registers the best as challenger and applies the guarded promotion."""
    candidate, holdout = fit_and_register(
        settings, frame, table_version, training_table=training_table, holdout_fraction=holdout_fraction,
        families=families,
    )  # fmt: skip
    assert candidate.model_version is not None  # registering is the default
    promotion = promote(settings, candidate.parent_run_id, candidate.model_version, holdout)
    return TrainResult(
        parent_run_id=candidate.parent_run_id,
        training_table_version=table_version,
        runs=candidate.runs,
        best_family=candidate.best_family,
        model_version=candidate.model_version,
        constant_ctr_metrics=candidate.constant_ctr_metrics,
        promotion=promotion,
    )


def default_training_table(settings: Settings) -> tuple[str, dict[str, str]]:
    return settings.delta_rs_location(Table.GOLD_CTR_TRAINING_SET)


def registering_runs(settings: Settings, max_results: int) -> list[Run]:
    """The latest training runs that registered a ``ctr-model`` version, newest first."""
    return search_ctr_runs(
        tracking_client(settings.mlflow_tracking_uri), f"tags.{REGISTERED_VERSION_TAG} != ''", max_results
    )


def last_trained_version(settings: Settings, training_table: str) -> tuple[str, int] | None:
    """(run id, table version) of the latest training run that registered a model from ``training_table``."""
    for run in registering_runs(settings, max_results=20):
        params = run.data.params
        if params.get("training_table") == training_table and params.get("training_table_version", "").isdigit():
            return run.info.run_id, int(params["training_table_version"])
    return None


def train_challenger(settings: Settings, *, force: bool = False, table_version: int | None = None) -> dict[str, Any]:
    """Trains on the training table at ``table_version`` (None: the latest) and registers the challenger (no
    promotion); prints the summary.

    A table version that already produced a registered model is not trained again
    (hourly feature builds often add nothing) unless ``force``.
    """
    ensure_reachable(settings.mlflow_tracking_uri)
    location, options = default_training_table(settings)
    frame, version = load_training_set(location, options, version=table_version)
    previous = None if force else last_trained_version(settings, location)
    if previous is not None and previous[1] == version:
        print(f"training table version {version} was already trained in run {previous[0]}; nothing to do")
        return {"trained": False, "training_run": previous[0], "training_table_version": version}
    candidate, _ = fit_and_register(settings, frame, version, training_table=location)
    print(candidate_summary(candidate), flush=True)
    return {
        "trained": True,
        "training_run": candidate.parent_run_id,
        "model_version": candidate.model_version,
        "best_family": candidate.best_family,
        "training_table_version": version,
    }


def candidate_summary(candidate: Candidate) -> str:
    lines = [
        f"training table version {candidate.training_table_version}, parent run {candidate.parent_run_id}",
        f"constant CTR baseline: NE {candidate.constant_ctr_metrics['normalized_entropy']:.4f}",
    ]
    for run in candidate.runs.values():
        m = run.metrics
        lines.append(
            f"{run.family}: NE {m['normalized_entropy']:.4f}, ROC AUC {m['roc_auc']:.4f}, "
            f"calibration {m['calibration']:.3f} (run {run.run_id})"
        )
        lines += [
            f"  {name.split('.')[0]} only: ROC AUC {value:.4f}"
            for name, value in sorted(m.items())
            if name.endswith(".roc_auc")
        ]
    if candidate.model_version is None:
        lines.append(f"evaluation only: best family {candidate.best_family}, nothing registered")
    else:
        lines.append(f"registered {candidate.best_family} as ctr-model version {candidate.model_version} (challenger)")
    return "\n".join(lines)


def promotion_summary(promotion: Promotion) -> str:
    return promotion.summary()
