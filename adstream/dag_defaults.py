"""How the Airflow tasks retry, and when a scheduled DAG first runs.

Every task in dags/ is idempotent: it overwrites or upserts what it writes (``replaceWhere``, MERGE,
overwrite), or skips a table version it has already trained. So a transient fault (a JVM slow to start,
MLflow or Kafka briefly away) is retried with exponential backoff rather than failing the run. A task that
is not idempotent sets ``retries=0`` where it is declared and says why.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import CronTriggerTimetable

RETRY_DEFAULT_ARGS = {
    "retries": 3,
    "retry_delay": timedelta(seconds=30),
    # About 30 s, 1 min, 2 min between attempts (Airflow adds jitter), never more than MAX_RETRY_DELAY.
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
}


def next_ticks(expression: str) -> CronTriggerTimetable:
    """The cron ``expression``'s ticks in UTC, the first one *after* the DAG is unpaused.

    With catchup off, Airflow starts a run for the tick just passed the moment a DAG is unpaused if
    the DAG has a start_date (and, without one, within a tenth of the period after a tick). Unpausing
    ingestion and features then builds them twice at once: that catch-up run and the run the caller
    triggers or the Assets start. ``run_immediately=timedelta(0)`` on a DAG without a start_date waits
    for the next tick; a run wanted now is triggered.
    """
    return CronTriggerTimetable(expression, timezone="UTC", run_immediately=timedelta(0))
