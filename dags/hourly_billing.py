"""silver/feedback_events -> gold/billing_hourly -> reconciliation -> reports/billing/ for finance, every hour.

Each run bills the hour of its data interval (usually provisional: the stream's watermark
trails the clock) and re-bills the still-provisional hours before it, which are final once the
watermark has passed them. Wiring only: the tasks call `cli.tasks.bill|reconcile|export`, also runnable as
`adstream bill --hour … [--step bill|reconcile|export] [--with-provisional]`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import CronTriggerTimetable, dag, get_current_context, task

from adstream.assets import table_asset
from adstream.contracts import Table
from adstream.dag_defaults import RETRY_DEFAULT_ARGS


@dag(
    dag_id="hourly_billing",
    # The run at HH:00 bills [HH-1:00, HH:00).
    schedule=CronTriggerTimetable("0 * * * *", timezone="UTC", interval=timedelta(hours=1)),
    start_date=datetime(2026, 11, 24, tzinfo=UTC),
    default_args=RETRY_DEFAULT_ARGS,
    catchup=True,
    max_active_runs=1,  # hours are billed in order; a backfill queues behind the current run
    tags=["billing", "finance", "gold"],
)
def hourly_billing():
    @task(outlets=[table_asset(Table.GOLD_BILLING_HOURLY), table_asset(Table.GOLD_EXCHANGE_COSTS_HOURLY)])
    def bill() -> list[str]:
        from cli import tasks

        context = get_current_context()
        hours = tasks.bill(context["data_interval_start"])
        tasks.name_table_versions(
            context["outlet_events"], [Table.GOLD_BILLING_HOURLY, Table.GOLD_EXCHANGE_COSTS_HOURLY]
        )
        return hours

    @task
    def reconcile(hours: list[str]) -> list[str]:
        from cli import tasks

        return tasks.reconcile(hours)

    @task
    def export(hours: list[str]) -> list[str]:
        from cli import tasks

        return tasks.export(hours)

    hours = bill()
    # Finance gets the exports only of hours that reconciled.
    reconcile(hours) >> export(hours)


hourly_billing()
