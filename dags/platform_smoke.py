"""Smoke DAG: Kafka -> Spark -> Delta, proving the engines work together under Airflow.

Wiring only: each task calls `cli.tasks.smoke_*`, whose steps also run as
`adstream smoke produce|land|verify --run-id …`.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task

from adstream.dag_defaults import RETRY_DEFAULT_ARGS

SMOKE_EVENTS = 100


@dag(
    dag_id="platform_smoke",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    default_args=RETRY_DEFAULT_ARGS,
    catchup=False,
    tags=["platform"],
)
def platform_smoke():
    # Not retried: a second attempt sends its events to Kafka again, and the smoke table would hold each twice.
    @task(retries=0)
    def produce_events(run_id: str) -> str:
        from cli import tasks

        return tasks.smoke_produce(run_id, SMOKE_EVENTS)

    @task
    def land_events(smoke_run: str) -> str:
        from cli import tasks

        return tasks.smoke_land()

    @task
    def verify_events(smoke_run: str, table_path: str) -> int:
        from cli import tasks

        return tasks.smoke_verify(smoke_run, SMOKE_EVENTS)

    smoke_run = produce_events(run_id="{{ run_id }}")
    verify_events(smoke_run, land_events(smoke_run))


platform_smoke()
