"""Bronze -> silver users/ads -> gold features and the CTR training set.

Runs when ingestion publishes new bronze tables (Assets), and hourly for logged
data. Wiring only: the tasks call `cli.tasks.build_silver` / `cli.tasks.build_features`,
also runnable as `adstream silver` and `adstream features`.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, get_current_context, task

from adstream.assets import table_asset
from adstream.contracts import Table

BRONZE = [
    Table.BRONZE_ADVERTISING, Table.BRONZE_ADS16_USERS, Table.BRONZE_ADS16_RATINGS,
    Table.BRONZE_ADS16_ADS, Table.BRONZE_AMAZON_ADS,
]  # fmt: skip


@dag(
    dag_id="feature_build",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 * * * *", timezone="UTC"),
        assets=[table_asset(table) for table in BRONZE],
    ),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["features", "silver", "gold"],
)
def feature_build():
    @task(outlets=[table_asset(Table.SILVER_USERS), table_asset(Table.SILVER_ADS)])
    def build_silver() -> dict[str, int]:
        from cli import tasks

        return tasks.build_silver()

    @task(
        outlets=[
            table_asset(Table.GOLD_CTR_TRAINING_SET),
            table_asset(Table.GOLD_USER_FEATURES),
            table_asset(Table.GOLD_AD_FEATURES),
        ]
    )
    def build_gold(silver: dict[str, int]) -> dict[str, int]:
        from cli import tasks

        context = get_current_context()
        run_type = context["dag_run"].run_type
        run_type = getattr(run_type, "value", run_type)  # an enum or its value, depending on the runtime
        return tasks.build_features(run_type, context.get("data_interval_start"), context.get("data_interval_end"))

    build_gold(build_silver())


feature_build()
