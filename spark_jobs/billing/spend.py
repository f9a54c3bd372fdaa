"""Spend per campaign and hour as the lake sees it, to reconcile with the campaign store's ledger.

``reconcile_spend`` answers in the shape of ``auction_service.campaign_store.store.spend_by_campaign_hour``
({(campaign_id, UTC hour start): micros}), so the two sides compare with ``==``. Billable
events are those the ledger charged (spark_jobs.ivt_transforms.is_charged), invalid traffic
included: the ledger charged an SIVT click before the stream tagged it. silver/feedback_events
holds each event_id once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from adstream.contracts import Table
from adstream.settings import Settings
from spark_jobs.ivt_transforms import is_charged, with_event_columns


def spend_by_campaign_hour(feedback_events: DataFrame, start: datetime, end: datetime) -> DataFrame:
    """(campaign_id, hour, spend_micros) of the billable events with an event time in [start, end)."""
    billable = with_event_columns(feedback_events).where(
        (F.col("event_time") >= F.lit(start)) & (F.col("event_time") < F.lit(end)) & is_charged()
    )
    return billable.groupBy("campaign_id", F.date_trunc("hour", "event_time").alias("hour")).agg(
        F.sum("cost_micros").cast("bigint").alias("spend_micros")
    )


def reconcile_spend(
    spark: SparkSession, settings: Settings, start: datetime, end: datetime
) -> dict[tuple[str, datetime], int]:
    """Silver's spend in integer micros per (campaign_id, UTC hour start) for events in [start, end)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware (UTC) datetimes")
    first_day, last_day = start.astimezone(UTC).date(), (end.astimezone(UTC) - timedelta(microseconds=1)).date()
    silver = spark.read.format("delta").load(settings.lake_path(Table.SILVER_FEEDBACK_EVENTS))
    in_days = silver.where(F.col("event_date").between(F.lit(first_day), F.lit(last_day)))  # partition pruning
    rows = (
        spend_by_campaign_hour(in_days, start, end)
        # Epoch seconds, not a Python datetime: collect() would convert to the host's local time.
        .select("campaign_id", F.unix_timestamp("hour").alias("hour_s"), "spend_micros")
        .collect()
    )
    return {(row.campaign_id, datetime.fromtimestamp(row.hour_s, UTC)): row.spend_micros for row in rows}
