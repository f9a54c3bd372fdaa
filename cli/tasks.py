"""The Airflow tasks' callables: each one line on this process's ``Resources``.

A DAG file imports this module inside its task bodies (parsing a DAG loads no Spark,
MLflow or Great Expectations) and returns what the callable returns, as XCom.

A task that writes lake tables names, on each table's Asset event, the Delta version it left the table at
and its row count (``name_table_versions``); a DAG scheduled on that table reads the version the event
names (``triggering_table_version``), not whatever is latest when it runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError
from pyspark.sql import SparkSession

from adstream.contracts import Table
from cli.resources import SPARK_APPS, resources
from ingestion.pipeline import ingest_summary
from ml import bid_filter_training
from ml.promote import promote_after_training
from ml.train import train_challenger
from spark_jobs import features, maintenance, silver, smoke
from spark_jobs.billing import job as billing


def _spark(app_name: str, extra: dict[str, str] | None = None) -> SparkSession:
    return resources().spark(app_name, extra)


DELTA_VERSION = "delta_version"  # keys of a lake table's Asset event extra
ROW_COUNT = "row_count"


def table_version_extra(location: str, storage_options: Mapping[str, str] | None = None) -> dict[str, int]:
    """The Delta table's current version and its row count at that version; empty when there is no table."""
    try:
        table = DeltaTable(location, storage_options=dict(storage_options or {}))
    except TableNotFoundError:
        return {}
    return {DELTA_VERSION: table.version(), ROW_COUNT: table.count()}


def name_table_versions(outlet_events: Any, tables: Iterable[Table]) -> dict[str, dict[str, int]]:
    """Sets each table's Asset event extra (``outlet_events``, the task's context) to the version this task
    left it at; returns them. Read right after the task's own write: each table here has a single writer."""
    from adstream.assets import table_asset  # Airflow's SDK: loaded in task processes only

    settings = resources().settings
    named = {}
    for table in tables:
        extra = table_version_extra(*settings.delta_rs_location(table))
        outlet_events[table_asset(table)].extra = extra
        named[table.value] = extra
    return named


def triggering_table_version(triggering_asset_events: Mapping[Any, Sequence[Any]], table: Table) -> int | None:
    """The Delta version of ``table`` the newest Asset event that triggered this run names; None when none does
    (a manual or cron run, or an event from outside Airflow), and the latest version is read."""
    from adstream.assets import table_asset

    events = [event for event in triggering_asset_events.get(table_asset(table), ()) if DELTA_VERSION in event.extra]
    if not events:
        print(f"{table.value}: no Asset event that triggered this run names a version; reading the latest", flush=True)
        return None
    version = int(max(events, key=lambda event: event.timestamp).extra[DELTA_VERSION])
    print(f"{table.value} version {version}, named by the Asset event that triggered this run", flush=True)
    return version


def triggering_table_versions(
    triggering_asset_events: Mapping[Any, Sequence[Any]], tables: Iterable[Table]
) -> dict[Table, int]:
    """``triggering_table_version`` of each of ``tables``, leaving out those no event names (read at their
    latest)."""
    versions = {table: triggering_table_version(triggering_asset_events, table) for table in tables}
    return {table: version for table, version in versions.items() if version is not None}


def ingest(dataset: str) -> dict[str, object]:
    """One Kaggle dataset into bronze; fails the task on a refused load."""
    return ingest_summary(resources().settings, dataset)


def build_silver(bronze_versions: Mapping[Table, int] | None = None) -> dict[str, int]:
    """Silver from bronze, each bronze table at the version ``bronze_versions`` names (else its latest)."""
    return silver.build(_spark(SPARK_APPS["silver"]), resources().settings, bronze_versions=bronze_versions)


def build_features(
    run_type: str, start: datetime | None, end: datetime | None, bronze_versions: Mapping[Table, int] | None = None
) -> dict[str, int]:
    """Gold for the run's interval, each bronze table at the version ``bronze_versions`` names (else its latest)."""
    return features.build_for_run(
        _spark(SPARK_APPS["features"]), resources().settings, run_type, start, end, bronze_versions
    )


def train(force: bool = False, table_version: int | None = None) -> dict[str, Any]:
    """Trains and registers the challenger on the training table at ``table_version`` (None: the latest), unless
    that version was trained (and not ``force``)."""
    return train_challenger(resources().settings, force=force, table_version=table_version)


def promote(training: dict[str, Any]) -> dict[str, Any]:
    return promote_after_training(resources().settings, training)


def train_bid_filter(force: bool = False, table_version: int | None = None) -> dict[str, Any]:
    """Trains and registers a bid-filter challenger on silver/auctions at ``table_version`` (None: the latest);
    says why not when the log cannot train."""
    return bid_filter_training.train_challenger(resources().settings, force=force, table_version=table_version)


def promote_bid_filter(training: dict[str, Any]) -> dict[str, Any]:
    return bid_filter_training.promote_after_training(resources().settings, training)


def bill(hour: datetime) -> list[str]:
    """Bills the interval's hour and re-bills the provisional hours before it; returns the hours, ISO."""
    spark = _spark(billing.SPARK_APP, billing.SPARK_CONF)
    return [b.hour.isoformat() for b in billing.bill_hours(spark, resources().settings, hour, now=datetime.now(UTC))]


def reconcile(hours: list[str]) -> list[str]:
    """Reconciles each billed hour; fails on a final hour's mismatch."""
    spark = _spark(billing.SPARK_APP, billing.SPARK_CONF)
    return [r.report() for r in billing.reconcile_hours(spark, resources().settings, hours)]


def export(hours: list[str]) -> list[str]:
    """The CSV and HTML of each billed hour (no Spark); returns the HTML paths."""
    return [str(e.html) for e in billing.export_hours(resources().settings, hours)]


def maintain() -> list[dict[str, object]]:
    """Compacts and vacuums every streaming table with the safe retention."""
    return [asdict(r) for r in maintenance.maintain(_spark(SPARK_APPS["maintain"]), resources().settings)]


def smoke_produce(run_id: str, count: int) -> str:
    smoke.produce(resources().settings, run_id, count)
    return run_id


def smoke_land() -> str:
    return smoke.land(_spark(SPARK_APPS["smoke"]), resources().settings)


def smoke_verify(run_id: str, count: int) -> int:
    """Fails unless exactly ``count`` events of ``run_id`` landed in Delta."""
    return smoke.verify(_spark(SPARK_APPS["smoke"]), resources().settings, run_id, count)
