"""How the Airflow tasks retry.

Every task in dags/ is idempotent: it overwrites or upserts what it writes (``replaceWhere``, MERGE,
overwrite), or skips a table version it has already trained. So a transient fault (a JVM slow to start,
MLflow or Kafka briefly away) is retried with exponential backoff rather than failing the run. A task that
is not idempotent sets ``retries=0`` where it is declared and says why.
"""

from __future__ import annotations

from datetime import timedelta

RETRY_DEFAULT_ARGS = {
    "retries": 3,
    "retry_delay": timedelta(seconds=30),
    # About 30 s, 1 min, 2 min between attempts (Airflow adds jitter), never more than MAX_RETRY_DELAY.
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
}
