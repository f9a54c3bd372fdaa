"""silver/auctions -> bid-request filter in MLflow -> guarded promotion of bid-filter@champion.

Runs when silver/auctions is published as an Asset event, and hourly: the streaming job appends to the
table outside Airflow, so the hour is what makes the filter follow the traffic. Wiring only: the tasks
call `cli.tasks.train_bid_filter` and `cli.tasks.promote_bid_filter`, also runnable as
`adstream bid-filter train --skip-promotion` and `adstream bid-filter promote`. A table version already
trained is skipped unless the run's param `force` is true; a log too small to train is reported, not failed. An
Asset event naming a Delta version (posted through the REST API) is trained on that version, else the latest.
"""

from __future__ import annotations

from airflow.sdk import AssetOrTimeSchedule, Param, dag, get_current_context, task

from adstream.assets import registered_model_asset, table_asset
from adstream.contracts import BID_FILTER_MODEL, Table
from adstream.dag_defaults import RETRY_DEFAULT_ARGS, next_ticks


@dag(
    dag_id="bid_filter_training",
    schedule=AssetOrTimeSchedule(
        timetable=next_ticks("30 * * * *"),
        assets=[table_asset(Table.SILVER_AUCTIONS)],
    ),
    default_args=RETRY_DEFAULT_ARGS,
    catchup=False,
    max_active_runs=1,
    params={"force": Param(False, type="boolean", description="train even if this table version was trained")},
    tags=["ml", "mlflow", "bid-filter"],
)
def bid_filter_training():
    @task
    def train_and_register() -> dict:
        from cli import tasks

        context = get_current_context()
        version = tasks.triggering_table_version(context["triggering_asset_events"], Table.SILVER_AUCTIONS)
        return tasks.train_bid_filter(force=bool(context["params"]["force"]), table_version=version)

    @task(outlets=[registered_model_asset(BID_FILTER_MODEL)])
    def promote_challenger(training: dict) -> dict:
        from cli import tasks

        return tasks.promote_bid_filter(training)

    promote_challenger(train_and_register())


bid_filter_training()
