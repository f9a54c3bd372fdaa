"""Billing's reads and writes: the lake's Delta tables, the campaign store's ledger, and the published bill.

- The stream's watermark is read from silver/feedback_events: max(event_time) - STREAM_WATERMARK_S.
- The campaign store is only read, and only when it exists: billing never creates or migrates it.
  Budgets are (total budget, ledger spend before the hour end) per campaign; the ledger's spend of an
  hour is ``spend_by_campaign_hour``.
- Publishing MERGEs the bill on (hour, campaign_id); the hour's rows that the new bill lacks are
  deleted, so a re-run or backfill replaces the hour exactly. Columns the table lacks (a bill from
  before they existed) are added by the MERGE.
- The hour's media cost per exchange (gold/exchange_costs_hourly) is MERGEd the same way on
  (hour, exchange_id).
- Provisional hours, and hours with a held-back campaign, are read back from the published bill,
  so a later run can replace them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from adstream.contracts import Table
from adstream.settings import Settings
from auction_service.campaign_store import store
from auction_service.campaign_store.db import make_engine, make_session_factory
from spark_jobs.billing import reports
from spark_jobs.billing.reports import HOUR, BillStatus
from spark_jobs.billing.transforms import BILL_COLUMNS, BILL_DDL, as_utc, auction_log_spend, charged_events, in_window

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
REBILL_LOOKBACK = timedelta(days=2)  # scheduled runs re-bill provisional hours this recent


# --- the lake ---


def read_table(spark: SparkSession, settings: Settings, table: Table) -> DataFrame | None:
    """The table, or None while it does not exist."""
    path = settings.lake_path(table)
    return spark.read.format("delta").load(path) if DeltaTable.isDeltaTable(spark, path) else None


def stream_watermark(feedback: DataFrame | None, hour: datetime, watermark_s: int) -> datetime | None:
    """max(event_time) - the stream's allowed lateness; None before any event.

    Events from the hour on are read first, so Delta skips the older files; the whole table
    is read only when the stream has not reached the hour at all.
    """
    if feedback is None:
        return None
    latest = feedback.where(F.col("event_time") >= F.lit(hour)).agg(F.max("event_time")).first()[0]
    if latest is None:
        latest = feedback.agg(F.max("event_time")).first()[0]
    if latest is None:
        return None
    return as_utc(latest) - timedelta(seconds=watermark_s)


def auction_log_by_campaign(
    spark: SparkSession, settings: Settings, feedback: DataFrame | None, hour: datetime
) -> dict[str, int] | None:
    """Per campaign, the auction log's price of the hour's charged events; None without silver/auctions."""
    auctions = read_table(spark, settings, Table.SILVER_AUCTIONS)
    if auctions is None:
        return None
    if feedback is None:
        return {}
    lookback = timedelta(seconds=settings.auction_ttl_s)
    charged = charged_events(feedback, hour, lookback)
    # An auction precedes its events by at most the TTL (plus clock skew).
    window = in_window(auctions, hour - 2 * lookback, hour + HOUR + lookback)
    return {row.campaign_id: int(row.spend_micros) for row in auction_log_spend(charged, window).collect()}


# --- the campaign store ---


@dataclass(frozen=True)
class CampaignStore:
    """The campaign store, read only, when it exists: billing never creates or migrates it."""

    sessions: Any

    @classmethod
    def open(cls, settings: Settings) -> tuple[CampaignStore | None, str]:
        """The store, or None and why not."""
        url = make_url(settings.campaign_db_url)
        if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
            return None, f"no campaign store at {url.database}"
        engine = make_engine(settings)
        if not inspect(engine).has_table("spend_ledger"):
            engine.dispose()
            return None, f"the campaign store at {url.render_as_string(hide_password=True)} has no ledger yet"
        return cls(make_session_factory(engine)), ""

    def budgets(self, campaign_ids: list[str], hour_end: datetime) -> dict[str, tuple[int, int]]:
        """campaign -> (total budget, ledger spend before ``hour_end``) for the campaigns the store knows."""
        with self.sessions() as session:
            ledger = store.spend_by_campaign_hour(session, EPOCH, hour_end)
            spent: dict[str, int] = defaultdict(int)
            for (campaign, _hour), micros in ledger.items():
                spent[campaign] += micros
            budgets = {}
            for campaign in campaign_ids:
                view = store.get_campaign(session, campaign)
                if view is not None:
                    budgets[campaign] = (view.spec.total_budget_micros, spent[campaign])
        return budgets

    def ledger_spend(self, hour: datetime) -> dict[str, int]:
        with self.sessions() as session:
            ledger = store.spend_by_campaign_hour(session, hour, hour + HOUR)
        return {campaign: micros for (campaign, _hour), micros in ledger.items()}


def campaign_budgets(settings: Settings, campaigns: list[str], hour: datetime) -> dict[str, tuple[int, int]] | None:
    """The campaigns' budgets at the hour end, or None (said) without a campaign store."""
    campaign_store, why = CampaignStore.open(settings)
    if campaign_store is None:
        print(f"{why}: the bill's budget columns are left empty")
        return None
    return campaign_store.budgets(campaigns, hour + HOUR)


# --- the published bill ---


def publish_bill(spark: SparkSession, settings: Settings, rows: pd.DataFrame, hour: datetime) -> None:
    """MERGE the hour's bill on (hour, campaign_id); rows of that hour the bill lacks are deleted."""
    records = [tuple(_plain(value) for value in row) for row in rows[list(BILL_COLUMNS)].itertuples(index=False)]
    bill = spark.createDataFrame(records, BILL_DDL)
    replace_hour(spark, settings.lake_path(Table.GOLD_BILLING_HOURLY), bill, hour, key="campaign_id")


def publish_exchange_costs(spark: SparkSession, rows: DataFrame, settings: Settings, hour: datetime) -> None:
    """MERGE the hour's media cost per exchange on (hour, exchange_id); rows of that hour it lacks are deleted."""
    replace_hour(spark, settings.lake_path(Table.GOLD_EXCHANGE_COSTS_HOURLY), rows, hour, key="exchange_id")


def replace_hour(spark: SparkSession, path: str, rows: DataFrame, hour: datetime, *, key: str) -> None:
    """The hour's rows of the table at ``path`` become ``rows``: MERGEd on (hour, ``key``), and the hour's rows
    they lack deleted, so a re-run or backfill replaces the hour exactly. Columns the table lacks are added."""
    if not DeltaTable.isDeltaTable(spark, path):
        rows.write.format("delta").save(path)
        return
    (
        DeltaTable.forPath(spark, path)
        .alias("g")
        .merge(rows.alias("r"), f"g.hour = r.hour AND g.{key} <=> r.{key}")
        .withSchemaEvolution()
        .whenMatchedUpdateAll()
        .whenNotMatchedInsertAll()
        .whenNotMatchedBySourceDelete(F.col("g.hour") == F.lit(hour))
        .execute()
    )


def _plain(value: Any) -> Any:
    """A pandas cell as the Python value Spark takes (None for missing, int, datetime)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return int(value) if hasattr(value, "dtype") and value.dtype.kind in "iu" else value


def provisional_hours(settings: Settings, before: datetime) -> list[datetime]:
    """Hours of the last REBILL_LOOKBACK before ``before`` whose bill is still provisional or holds a campaign back."""
    try:
        issued = reports.read_bill(settings, start=before - REBILL_LOOKBACK, end=before)
    except reports.BillNotFound:
        return []
    open_statuses = [BillStatus.PROVISIONAL.value, BillStatus.HELD_BACK.value]
    pending = issued.loc[issued["status"].isin(open_statuses), "hour"].drop_duplicates()
    return sorted(hour.to_pydatetime() for hour in pending)
