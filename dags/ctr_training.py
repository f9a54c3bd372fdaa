"""gold/ctr_training_set -> CTR model families in MLflow -> guarded promotion of ctr-model@champion.

Runs when feature_build publishes the training set (Asset), on the Delta version its event names
(a manual run reads the latest). Wiring only: the tasks call `cli.tasks.train` and `cli.tasks.promote`,
also runnable as `adstream train --skip-promotion` and `adstream promote`. A training-set version
that was already trained is skipped unless the run's param `force` is true.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, get_current_context, task

from adstream.assets import registered_model_asset, table_asset
from adstream.contracts import Table
from adstream.dag_defaults import RETRY_DEFAULT_ARGS


@dag(
    dag_id="ctr_training",
    schedule=[table_asset(Table.GOLD_CTR_TRAINING_SET)],
    start_date=datetime(2026, 1, 1),
    default_args=RETRY_DEFAULT_ARGS,
    catchup=False,
    max_active_runs=1,
    params={"force": Param(False, type="boolean", description="train even if this table version was trained")},
    tags=["ml", "mlflow"],
)
def ctr_training():
    @task
    def train_and_register() -> dict:
        from cli import tasks

        context = get_current_context()
        version = tasks.triggering_table_version(context["triggering_asset_events"], Table.GOLD_CTR_TRAINING_SET)
        return tasks.train(force=bool(context["params"]["force"]), table_version=version)

    @task(outlets=[registered_model_asset()])
    def promote_challenger(training: dict) -> dict:
        from cli import tasks

        return tasks.promote(training)

    promote_challenger(train_and_register())


ctr_training()
