"""Invalid traffic in the lake: gold/ivt_hourly, and the IVT tag of each silver event for evaluation.

    build_ivt_hour(spark, settings, hour, computed_at=now)  # the hourly billing run calls it for every hour it bills
    ivt_summary(settings, start, end)                       # pandas, without Spark: one row per silver event

Events are tagged where they are decided (GIVT by the auction service, SIVT-lite by the stream as
clicks land in silver; spark_jobs.ivt_transforms states the rules), plus those tagged after the
fact (click-rate outliers' bursts, fast-clicked auctions), here as billing tags them. The hourly
report counts those tags: per campaign, publisher and UTC hour, the events, the GIVT and SIVT ones,
the IVT rate, the count per reason and what the ledger charged for tagged events. It is MERGEd on
(hour, campaign_id, publisher_id) and the hour's rows that the new count lacks are deleted: a
re-run of an hour (the billing run re-bills provisional hours) replaces it exactly.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import deltalake
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from adstream.contracts import Table
from adstream.events import EventType
from adstream.settings import Settings
from spark_jobs.ivt_transforms import (
    BURSTS,
    IVT_HOURLY_KEY,
    ivt_by_hour,
    tagged_between,
    with_event_columns,
)

HOUR = timedelta(hours=1)
SUMMARY_COLUMNS = (
    "event_id", "event_type", "event_time", "auction_id", "campaign_id", "publisher_id", "user_id", "user_agent",
    "ip", "charge_status", "cost_micros", "ivt_category", "ivt_reason",
)  # fmt: skip


def build_ivt_hour(spark: SparkSession, settings: Settings, hour: datetime, *, computed_at: datetime) -> int:
    """gold/ivt_hourly for [hour, hour + 1 h) from silver/feedback_events; returns the hour's rows."""
    silver = settings.lake_path(Table.SILVER_FEEDBACK_EVENTS)
    if not DeltaTable.isDeltaTable(spark, silver):
        return 0
    events = spark.read.format("delta").load(silver)
    window_s = settings.ivt_sivt_window_s
    if "event_date" in events.columns:  # the stream's partitions; a table written otherwise may lack them
        reach = timedelta(seconds=window_s)  # a click burst's outliers may lie that far outside the hour
        days = F.col("event_date").between(F.lit((hour - reach).date()), F.lit((hour + HOUR + reach).date()))
        events = events.where(days)
    hour_events = tagged_between(with_event_columns(events), hour, hour + HOUR, window_s=window_s)
    rows = ivt_by_hour(hour_events, hour, computed_at=computed_at).persist()
    try:
        path = settings.lake_path(Table.GOLD_IVT_HOURLY)
        if not DeltaTable.isDeltaTable(spark, path):
            rows.write.format("delta").save(path)
        else:
            key = " AND ".join(f"g.{column} <=> r.{column}" for column in IVT_HOURLY_KEY)
            (
                DeltaTable.forPath(spark, path)
                .alias("g")
                .merge(rows.alias("r"), key)
                .withSchemaEvolution()
                .whenMatchedUpdateAll()
                .whenNotMatchedInsertAll()
                .whenNotMatchedBySourceDelete(F.col("g.hour") == F.lit(hour))
                .execute()
            )
        return rows.count()
    finally:
        rows.unpersist()


def ivt_summary(settings: Settings, start: datetime, end: datetime) -> pd.DataFrame:
    """Every silver event with an event time in [start, end) and its IVT tag (SUMMARY_COLUMNS; ivt_category
    and ivt_reason null for valid traffic), with the tags billing gives after the fact, read with delta-rs:
    what a run's summary joins with its ground truth.
    """
    reach = timedelta(seconds=settings.ivt_sivt_window_s)
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    around = _silver_events(settings, start - reach, end + reach)
    events = with_later_ivt_frame(around, window_s=settings.ivt_sivt_window_s)
    return events[(events["event_time"] >= start) & (events["event_time"] < end)].reset_index(drop=True)


def with_later_ivt_frame(events: pd.DataFrame, *, window_s: int) -> pd.DataFrame:
    """spark_jobs.ivt_transforms.with_later_ivt on a pandas frame, for readers without Spark (same rules, BURSTS,
    same precedence)."""
    clicks = events[events["event_type"] == EventType.CLICK.value]
    window = pd.Timedelta(seconds=window_s)
    rank = pd.Series(0, index=events.index)
    category = pd.Series(None, index=events.index, dtype=object)
    reason = pd.Series(None, index=events.index, dtype=object)
    for clicked, bursts in BURSTS.items():
        for burst in bursts:
            deciding = clicks.loc[
                (clicks["ivt_reason"] == clicked) & clicks[burst.key].notna(), [burst.key, "event_time"]
            ]
            keyed = events.loc[events[burst.key].notna(), [burst.key, "event_time"]].rename_axis("_row").reset_index()
            pairs = keyed.merge(deciding.rename(columns={"event_time": "_at"}), on=burst.key)
            if burst.windowed:
                pairs = pairs[(pairs["event_time"] - pairs["_at"]).abs() < window]
            rows = pd.Index(pairs["_row"].unique())
            stronger = rows[rank.loc[rows] < burst.rank]
            rank.loc[stronger], category.loc[stronger], reason.loc[stronger] = burst.rank, burst.category, burst.reason
    later = (rank > 0) & events["ivt_category"].isna()
    tagged = events.copy()
    tagged.loc[later, "ivt_category"] = category[later].map(str)
    tagged.loc[later, "ivt_reason"] = reason[later].map(str)
    return tagged


def _silver_events(settings: Settings, start: datetime, end: datetime) -> pd.DataFrame:
    """silver/feedback_events' SUMMARY_COLUMNS for event times in [start, end), with delta-rs."""
    uri, options = settings.delta_rs_location(Table.SILVER_FEEDBACK_EVENTS)
    if not deltalake.DeltaTable.is_deltatable(uri, options):
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    dataset = deltalake.DeltaTable(uri, storage_options=options or None).to_pyarrow_dataset()
    stamp = pa.timestamp("us", tz="UTC")
    in_range = (pc.field("event_time") >= pa.scalar(start, stamp)) & (pc.field("event_time") < pa.scalar(end, stamp))
    if "event_date" in dataset.schema.names:  # the stream's partitions: only the days asked are read
        days = (pc.field("event_date") >= pa.scalar(start.date())) & (pc.field("event_date") <= pa.scalar(end.date()))
        in_range = days & in_range
    held = [column for column in SUMMARY_COLUMNS if column in dataset.schema.names]
    frame = dataset.to_table(columns=held, filter=in_range).to_pandas()
    for column in set(SUMMARY_COLUMNS) - set(held):  # ADDED_EVENT_COLUMNS a silver from before them lacks
        frame[column] = None
    return frame[list(SUMMARY_COLUMNS)]
