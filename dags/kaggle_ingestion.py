"""Kaggle files -> bronze Delta tables, gated by Great Expectations. One task group per dataset.

Wiring only: each task is `cli.tasks.ingest`, also runnable as
`adstream ingest <dataset>`. Re-runs on unchanged files finish in seconds.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import TaskGroup, dag, task

from adstream.assets import table_asset
from adstream.contracts import Table

DATASET_TABLES = {
    "advertising": [Table.BRONZE_ADVERTISING],
    "ads16": [Table.BRONZE_ADS16_USERS, Table.BRONZE_ADS16_RATINGS, Table.BRONZE_ADS16_ADS],
    "amazon": [Table.BRONZE_AMAZON_ADS],
}


@dag(
    dag_id="kaggle_ingestion",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
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

                return tasks.ingest(dataset)

            load_bronze(dataset)


kaggle_ingestion()
