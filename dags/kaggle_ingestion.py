"""Kaggle files -> bronze Delta tables, gated by Great Expectations. One task group per dataset.

Wiring only: each task is `cli.tasks.ingest`, also runnable as
`adstream ingest <dataset>`. Re-runs on unchanged files finish in seconds. Each bronze table's Asset event
names its Delta version and row count.
"""

from __future__ import annotations

from airflow.sdk import TaskGroup, dag, get_current_context, task

from adstream.assets import table_asset
from adstream.contracts import Table
from adstream.dag_defaults import RETRY_DEFAULT_ARGS, next_ticks

DATASET_TABLES = {
    "advertising": [Table.BRONZE_ADVERTISING],
    "ads16": [Table.BRONZE_ADS16_USERS, Table.BRONZE_ADS16_RATINGS, Table.BRONZE_ADS16_ADS],
    "amazon": [Table.BRONZE_AMAZON_ADS],
}


@dag(
    dag_id="kaggle_ingestion",
    schedule=next_ticks("0 0 * * *"),
    default_args=RETRY_DEFAULT_ARGS,
    catchup=False,
    max_active_runs=1,
    tags=["ingestion", "bronze"],
)
def kaggle_ingestion():
    for dataset, tables in DATASET_TABLES.items():
        with TaskGroup(group_id=dataset):

            @task(task_id="load_bronze", outlets=[table_asset(table) for table in tables])
            def load_bronze(dataset: str) -> dict:
                from cli import tasks

                loaded = tasks.ingest(dataset)
                tasks.name_table_versions(get_current_context()["outlet_events"], DATASET_TABLES[dataset])
                return loaded

            load_bronze(dataset)


kaggle_ingestion()
