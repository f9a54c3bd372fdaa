"""Registers a fitted pipeline the way the training job does, for tests that need a model version."""

from __future__ import annotations

import mlflow
import mlflow.sklearn

from adstream.contracts import MLFLOW_EXPERIMENT
from ml.calibration import CALIBRATION_ARTIFACT, Calibration
from ml.pipelines import SKOPS_TRUSTED_TYPES
from ml.registry import register_challenger
from ml.tracking import point_fluent_api_at, tracking_client
from ml.train import pip_requirements


def register(uri: str, pipeline, family: str = "logistic_regression", calibration: Calibration | None = None) -> str:
    """Logs ``pipeline`` (with ``calibration``, when given) as the training job does and registers it as a
    challenger of ``family``."""
    experiment_id = tracking_client(uri).get_experiment_by_name(MLFLOW_EXPERIMENT).experiment_id
    point_fluent_api_at(uri)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        logged = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            serialization_format="skops",
            skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
            pip_requirements=pip_requirements(),
        )
        if calibration is not None:
            mlflow.log_text(calibration.to_json(), CALIBRATION_ARTIFACT)
    return register_challenger(uri, logged.model_uri, logged.model_id, run.info.run_id, family)
