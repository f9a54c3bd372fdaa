"""Bronze -> silver users/ads -> gold features and the CTR training set.

Runs when ingestion publishes new bronze tables (Assets), and hourly for logged
data. Wiring only: the tasks call `cli.tasks.build_silver` / `cli.tasks.build_features`,
also runnable as `adstream silver` and `adstream features`. Both read each bronze table at the Delta version
its triggering Asset event names (an hourly or manual run, or a table no event names: the latest). Each
table's Asset event names the Delta version the task left it at and its row count.
"""

from __future__ import annotations

from airflow.sdk import AssetOrTimeSchedule, dag, get_current_context, task

from adstream.assets import table_asset
from adstream.contracts import Table
from adstream.dag_defaults import RETRY_DEFAULT_ARGS, next_ticks

BRONZE = [
    Table.BRONZE_ADVERTISING, Table.BRONZE_ADS16_USERS, Table.BRONZE_ADS16_RATINGS,
    Table.BRONZE_ADS16_ADS, Table.BRONZE_AMAZON_ADS,
]  # fmt: skip
SILVER = [Table.SILVER_USERS, Table.SILVER_ADS]
GOLD = [Table.GOLD_CTR_TRAINING_SET, Table.GOLD_USER_FEATURES, Table.GOLD_AD_FEATURES]


@dag(
    dag_id="feature_build",
    schedule=AssetOrTimeSchedule(
        timetable=next_ticks("0 * * * *"),
        assets=[table_asset(table) for table in BRONZE],
    ),
    default_args=RETRY_DEFAULT_ARGS,
    catchup=False,
    max_active_runs=1,
    tags=["features", "silver", "gold"],
)
def feature_build():
    @task(outlets=[table_asset(table) for table in SILVER])
    def build_silver() -> dict[str, int]:
        from cli import tasks

        context = get_current_context()
        written = tasks.build_silver(tasks.triggering_table_versions(context["triggering_asset_events"], BRONZE))
        tasks.name_table_versions(context["outlet_events"], SILVER)
        return written

    @task(outlets=[table_asset(table) for table in GOLD])
    def build_gold(silver: dict[str, int]) -> dict[str, int]:
        from cli import tasks

        context = get_current_context()
        run_type = context["dag_run"].run_type
        run_type = getattr(run_type, "value", run_type)  # an enum or its value, depending on the runtime
        bronze_versions = tasks.triggering_table_versions(context["triggering_asset_events"], BRONZE)
        written = tasks.build_features(
            run_type, context.get("data_interval_start"), context.get("data_interval_end"), bronze_versions
        )
        tasks.name_table_versions(context["outlet_events"], GOLD)
        return written

    build_gold(build_silver())


feature_build()
