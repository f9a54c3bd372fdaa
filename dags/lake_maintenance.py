"""Compacts the streaming tables' small files and vacuums them with a safe retention, every 6 hours.

Wiring only: the task calls `cli.tasks.maintain`, also runnable as
`adstream maintain`. It reports each table's file counts before and after.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from adstream.dag_defaults import RETRY_DEFAULT_ARGS, next_ticks


@dag(
    dag_id="lake_maintenance",
    schedule=next_ticks("0 */6 * * *"),
    default_args=RETRY_DEFAULT_ARGS,
    catchup=False,
    max_active_runs=1,
    tags=["maintenance", "delta"],
)
def lake_maintenance():
    @task
    def compact_and_vacuum() -> list[dict[str, object]]:
        from cli import tasks

        return tasks.maintain()

    compact_and_vacuum()


lake_maintenance()
