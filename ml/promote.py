"""The guarded promotion on its own: judge a training run's registered challenger against the champion.

    adstream promote [--training-run RUN_ID]   (default: the latest training run)

The holdout is rebuilt from what the training run logged (training table, its Delta
version, the holdout fraction), so the challenger and the champion are scored on
exactly the examples the training judged the families on.
"""

from __future__ import annotations

from typing import Any

from adstream.contracts import MLFLOW_EXPERIMENT
from adstream.settings import Settings
from ml.registry import Promotion
from ml.split import split_per_source
from ml.tracking import ensure_reachable, tracking_client
from ml.train import (
    REGISTERED_VERSION_TAG,
    TrainingSetError,
    default_training_table,
    load_training_set,
    promote,
    promotion_summary,
    registering_runs,
)


class NoTrainingRun(LookupError):
    """There is no training run (with a registered version) to promote."""


def promote_after_training(settings: Settings, training: dict[str, Any]) -> dict[str, Any]:
    """The step after ``ml.train.train_challenger``: decide only when that training produced something new."""
    if not training["trained"]:
        return {"training_run": training["training_run"], "promoted": False, "reasons": ["nothing new was trained"]}
    return decide_promotion(settings, training["training_run"])


def latest_training_run(settings: Settings) -> str:
    runs = registering_runs(settings, max_results=1)
    if not runs:
        raise NoTrainingRun(
            f"no training run with a registered version in experiment {MLFLOW_EXPERIMENT!r}; run `adstream train`"
        )
    return runs[0].info.run_id


def promote_training_run(settings: Settings, run_id: str) -> Promotion:
    """Rebuilds ``run_id``'s holdout from its logged lineage and applies the guarded promotion."""
    run = tracking_client(settings.mlflow_tracking_uri).get_run(run_id)
    version = run.data.tags.get(REGISTERED_VERSION_TAG)
    if not version:
        raise NoTrainingRun(f"run {run_id} registered no model version (an evaluation-only run?)")
    params = run.data.params
    location, options = default_training_table(settings)
    if params["training_table"] != location:
        options = {}
    if not params["training_table_version"].isdigit():
        raise TrainingSetError(f"run {run_id} trained on an in-memory frame; its holdout cannot be rebuilt")
    frame, _ = load_training_set(params["training_table"], options, version=int(params["training_table_version"]))
    _, holdout = split_per_source(frame, float(params["holdout_fraction"]))
    if len(holdout) != int(params["holdout_rows"]):
        raise TrainingSetError(
            f"the rebuilt holdout has {len(holdout)} rows, run {run_id} logged {params['holdout_rows']}"
        )
    return promote(settings, run_id, version, holdout)


def decide_promotion(settings: Settings, training_run: str | None = None) -> dict[str, Any]:
    """The promotion decision for one training run (default: the latest); prints it and returns it as values."""
    ensure_reachable(settings.mlflow_tracking_uri)
    run_id = training_run or latest_training_run(settings)
    promotion = promote_training_run(settings, run_id)
    print(promotion_summary(promotion), flush=True)
    return {"training_run": run_id, **promotion.outcome()}
