"""The Airflow tasks' callables: each one line on this process's ``Resources``.

A DAG file imports this module inside its task bodies (parsing a DAG loads no Spark,
MLflow or Great Expectations) and returns what the callable returns, as XCom.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import SparkSession

from cli.resources import SPARK_APPS, resources
from ingestion.pipeline import ingest_summary
from ml import bid_filter_training
from ml.promote import promote_after_training
from ml.train import train_challenger
from spark_jobs import features, maintenance, silver, smoke
from spark_jobs.billing import job as billing


def _spark(app_name: str, extra: dict[str, str] | None = None) -> SparkSession:
    return resources().spark(app_name, extra)


def ingest(dataset: str) -> dict[str, object]:
    """One Kaggle dataset into bronze; fails the task on a refused load."""
    return ingest_summary(resources().settings, dataset)


def build_silver() -> dict[str, int]:
    return silver.build(_spark(SPARK_APPS["silver"]), resources().settings)


def build_features(run_type: str, start: datetime | None, end: datetime | None) -> dict[str, int]:
    return features.build_for_run(_spark(SPARK_APPS["features"]), resources().settings, run_type, start, end)


def train(force: bool = False) -> dict[str, Any]:
    """Trains and registers the challenger, unless this training-table version was trained (and not ``force``)."""
    return train_challenger(resources().settings, force=force)


def promote(training: dict[str, Any]) -> dict[str, Any]:
    return promote_after_training(resources().settings, training)


def train_bid_filter(force: bool = False) -> dict[str, Any]:
    """Trains and registers a bid-filter challenger on silver/auctions; says why not when the log cannot train."""
    return bid_filter_training.train_challenger(resources().settings, force=force)


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
