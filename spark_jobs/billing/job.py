"""Hourly billing for finance: silver/feedback_events -> gold/billing_hourly, checked, reconciled, exported.

    python -m spark_jobs.billing.job --hour 2026-11-24T10:00                       # bill, reconcile, export one hour
    python -m spark_jobs.billing.job --from 2026-11-24T00:00 --to 2026-11-25T00:00  # a backfill, hour by hour
    python -m spark_jobs.billing.job --hour 2026-11-24T10:00 --step reconcile  # one step (a DAG task)
    python -m spark_jobs.billing.job --hour 2026-11-24T10:00 --with-provisional  # also re-bill earlier provisional hours

Documented rules:
- An hour is [hour, hour + 1 h) UTC of the event time; one bill row per advertiser x campaign.
- Billable event: ``cost_micros > 0`` and the event type its pricing model pays for (BILLABLE_EVENT:
  CPM impression, CPC click, CPA conversion). Deduplicated on event_id, then at most one per
  auction_id (the earliest, by event time then event id), as the ledger charges an auction once.
  An auction's events arrive within AUCTION_TTL_S of it, so events that far before the hour are
  read too: an auction already charged in an earlier hour is not charged again.
- Spend is the sum of those events' integer ``cost_micros``; every money and ratio column is also
  an exact decimal(18,6) (half-up rounding on integers, no binary float anywhere).
- Impressions, clicks and conversions count auctions with such an event in the hour (a repeated
  pixel or a double click counts once).
- Status: ``final`` only when the hour has ended and the stream's watermark (max event_time in
  silver/feedback_events - STREAM_WATERMARK_S) has reached the hour end: the service refuses and
  the stream quarantines anything older than that watermark, so no event of the hour can still
  arrive. Otherwise ``provisional``, replaced by a later run (the DAG re-bills the provisional hours
  of the last REBILL_LOOKBACK). An hour with no activity is one row with a null campaign_id,
  status ``empty`` (or ``provisional`` while it may still fill).
- Write-audit-publish: the bill is built, gated by Great Expectations (no negative spend, spend
  within the campaign's budget, clicks within the impressions they could belong to, currency and
  hour present, one row per campaign), then MERGEd on (hour, campaign_id); the hour's rows that
  the new bill lacks are deleted, so a re-run or backfill replaces the hour exactly.
- Reconciliation: per campaign, bill spend == campaign-store ledger (``spend_by_campaign_hour``)
  == auction log (``billable_cost_micros`` of the charged events' auctions in silver/auctions).
  A side without its store or table is skipped and named. A mismatch fails a final hour; for a
  provisional hour (the stream may lag the ledger) it is printed, listed, and not raised.
"""

from __future__ import annotations

import argparse
import functools
import json
import operator
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from adstream.contracts import Table
from adstream.events import BILLABLE_EVENT, EventType, PricingModel
from adstream.settings import Settings, get_settings
from spark_jobs.billing import reports as finance
from spark_jobs.billing.reports import HOUR, BillStatus

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_CURRENCY = "USD"  # the one currency campaigns may have (CampaignSpec); used for an empty hour's row
REBILL_LOOKBACK = timedelta(days=2)  # scheduled runs re-bill provisional hours this recent
MICROS = 1_000_000
MONEY = "decimal(18,6)"
# Gated but not published: the impressions of auctions whose clicks may land in the hour.
CLICKABLE_IMPRESSIONS = "clickable_impressions"
BILL_DDL = (
    "hour timestamp, advertiser_id string, campaign_id string, pricing_model string, currency string, "
    "impressions bigint, clicks bigint, conversions bigint, billable_events bigint, "
    f"spend_micros bigint, spend {MONEY}, ctr {MONEY}, ecpm {MONEY}, effective_cpc {MONEY}, "
    "budget_total_micros bigint, budget_spent_micros bigint, budget_remaining_micros bigint, "
    f"budget_remaining {MONEY}, "
    "status string, stream_watermark timestamp, billed_at timestamp"
)
BILL_COLUMNS = tuple(column.split()[0] for column in BILL_DDL.split(", "))
COUNT_COLUMNS = ("impressions", "clicks", "conversions", "billable_events", "spend_micros", CLICKABLE_IMPRESSIONS)


class BillCheckFailed(RuntimeError):
    """The bill failed a Great Expectations check: nothing of it was published."""


class ReconciliationError(RuntimeError):
    """Bill, ledger and auction log disagree on a final hour's spend."""


# --- pure transforms ---


def is_billable() -> Column:
    """The event is the one its pricing model pays for, and carries a cost."""
    paid_for = functools.reduce(
        operator.or_,
        [
            (F.col("pricing_model") == model.value) & (F.col("event_type") == event.value)
            for model, event in BILLABLE_EVENT.items()
        ],
    )
    return (F.col("cost_micros") > 0) & paid_for


def in_window(frame: DataFrame, start: datetime, end: datetime) -> DataFrame:
    return frame.where((F.col("event_time") >= F.lit(start)) & (F.col("event_time") < F.lit(end)))


def charged_events(feedback: DataFrame, hour: datetime, lookback: timedelta) -> DataFrame:
    """The hour's charged events (auction_id, event_time, event_id, campaign_id, cost_micros): per auction,
    its first billable event, by event time then event id; kept when that event lies in the hour.

    A re-delivered event_id is the same event, so it is charged once; a second billable event of an
    auction is never charged. ``feedback`` must reach ``lookback`` before the hour, so an auction
    charged in an earlier hour is seen and not charged again.
    """
    first = (
        in_window(feedback, hour - lookback, hour + HOUR)
        .where(is_billable())
        .groupBy("auction_id")
        # The smallest struct is the earliest event (fields compare in order); one aggregation, no sort.
        .agg(F.min(F.struct("event_time", "event_id", "campaign_id", "cost_micros")).alias("first"))
    )
    return first.select("auction_id", "first.*").where(F.col("event_time") >= F.lit(hour))


def rounded_quotient(numerator: str, denominator: str) -> Column:
    """round-half-up(numerator / denominator) on non-negative longs, exactly; null when dividing by zero."""
    quotient = F.expr(f"({numerator} * 2 + {denominator}) div ({denominator} * 2)")
    return F.when(F.col(denominator) > 0, quotient).cast("bigint")


def as_money(micros: Column) -> Column:
    """Integer micros as an exact decimal(18,6) amount."""
    return (micros.cast("decimal(20,0)") / F.lit(MICROS)).cast(MONEY)


def campaign_activity(feedback: DataFrame, hour: datetime, *, lookback: timedelta) -> DataFrame:
    """Per advertiser x campaign active in the hour: counts, spend and ratios
    (the BILL_COLUMNS from hour to effective_cpc, plus CLICKABLE_IMPRESSIONS).

    ``feedback`` must reach ``lookback`` before the hour (see ``charged_events``).
    """
    # Each (campaign, auction, event type) once, flagged when it happened in the hour: one shuffle
    # instead of a distinct count per event type.
    in_hour = (F.col("event_time") >= F.lit(hour)).cast("int")
    seen = (
        in_window(feedback, hour - lookback, hour + HOUR)
        .groupBy("advertiser_id", "campaign_id", "pricing_model", "currency", "auction_id", "event_type")
        .agg(F.max(in_hour).alias("in_hour"))
    )

    def auctions_with(event_type: EventType, *, hour_only: bool = True) -> Column:
        matches = (F.col("event_type") == event_type.value) & ((F.col("in_hour") == 1) if hour_only else F.lit(True))
        return F.sum(matches.cast("long"))

    activity = (
        seen.groupBy("advertiser_id", "campaign_id", "pricing_model", "currency")
        .agg(
            F.max("in_hour").alias("active"),
            auctions_with(EventType.IMPRESSION).alias("impressions"),
            auctions_with(EventType.CLICK).alias("clicks"),
            auctions_with(EventType.CONVERSION).alias("conversions"),
            # The impressions this hour's clicks can belong to: an auction's events come within its TTL.
            auctions_with(EventType.IMPRESSION, hour_only=False).alias(CLICKABLE_IMPRESSIONS),
        )
        .where(F.col("active") == 1)
    )
    charged = (
        charged_events(feedback, hour, lookback)
        .groupBy("campaign_id")
        .agg(F.count("*").alias("billable_events"), F.sum("cost_micros").alias("spend_micros"))
    )
    joined = activity.join(charged, "campaign_id", "left").fillna(0, subset=["billable_events", "spend_micros"])
    return joined.select(
        F.lit(hour).cast("timestamp").alias("hour"),
        "advertiser_id",
        "campaign_id",
        "pricing_model",
        "currency",
        *(F.col(name).cast("bigint").alias(name) for name in ("impressions", "clicks", "conversions")),
        F.col("billable_events").cast("bigint").alias("billable_events"),
        F.col("spend_micros").cast("bigint").alias("spend_micros"),
        as_money(F.col("spend_micros")).alias("spend"),
        as_money(rounded_quotient(f"clicks * {MICROS}", "impressions")).alias("ctr"),
        as_money(rounded_quotient("spend_micros * 1000", "impressions")).alias("ecpm"),
        as_money(rounded_quotient("spend_micros", "clicks")).alias("effective_cpc"),
        F.col(CLICKABLE_IMPRESSIONS).cast("bigint").alias(CLICKABLE_IMPRESSIONS),
    )


def finish_bill(
    activity: pd.DataFrame,
    hour: datetime,
    *,
    budgets: dict[str, tuple[int, int]] | None,
    status: BillStatus,
    watermark: datetime | None,
    billed_at: datetime,
) -> pd.DataFrame:
    """The bill (BILL_COLUMNS plus CLICKABLE_IMPRESSIONS) from the hour's ``campaign_activity``.

    ``budgets`` maps a campaign to (total budget, ledger spend before the hour end), in micros;
    without it, or for a campaign it lacks, the budget columns are empty. No activity gives the
    one row (null campaign) that records the hour as billed.
    """
    if activity.empty:
        marker = dict.fromkeys(BILL_COLUMNS) | dict.fromkeys(COUNT_COLUMNS, 0)
        activity = pd.DataFrame([marker | {"hour": hour, "currency": DEFAULT_CURRENCY, "spend": Decimal("0.000000")}])
    bill = activity.copy()
    budgets = budgets or {}
    bill["budget_total_micros"] = bill["campaign_id"].map(lambda c: budgets[c][0] if c in budgets else None)
    bill["budget_spent_micros"] = bill["campaign_id"].map(lambda c: budgets[c][1] if c in budgets else None)
    for column in (*COUNT_COLUMNS, "budget_total_micros", "budget_spent_micros"):
        bill[column] = bill[column].astype("Int64")
    bill["budget_remaining_micros"] = bill["budget_total_micros"] - bill["budget_spent_micros"]
    bill["budget_remaining"] = bill["budget_remaining_micros"].map(_money, na_action="ignore")
    bill["status"] = status.value
    bill["stream_watermark"] = pd.Timestamp(watermark) if watermark is not None else pd.NaT
    bill["billed_at"] = pd.Timestamp(billed_at)
    bill["hour"] = pd.Timestamp(hour)
    return bill[[*BILL_COLUMNS, CLICKABLE_IMPRESSIONS]]


def _money(micros: int) -> Decimal:
    return Decimal(int(micros)).scaleb(-6)


def bill_status(hour: datetime, watermark: datetime | None, now: datetime, *, has_activity: bool) -> BillStatus:
    """Final only when the hour is over and the stream's watermark reached its end; partial data never is."""
    closed = now >= hour + HOUR and watermark is not None and watermark >= hour + HOUR
    if not closed:
        return BillStatus.PROVISIONAL
    return BillStatus.FINAL if has_activity else BillStatus.EMPTY


def with_billable_cost(auctions: DataFrame) -> DataFrame:
    """Adds ``billable_cost_micros``: auction_service.serving.books.billable_cost_micros as a column expression
    (CPM prices are per thousand: a thousandth, rounded up to a whole micro)."""
    return auctions.withColumn(
        "billable_cost_micros",
        F.when(F.col("pricing_model") == PricingModel.CPM.value, F.expr("(clearing_price_micros + 999) div 1000"))
        .otherwise(F.col("clearing_price_micros"))
        .cast("bigint"),
    )


def auction_log_spend(charged: DataFrame, auctions: DataFrame) -> DataFrame:
    """Per campaign, what the auction log says the charged events cost (campaign_id, spend_micros)."""
    priced = (
        with_billable_cost(auctions.where(F.col("filled")))
        .select("auction_id", F.col("campaign_id").alias("auction_campaign_id"), "billable_cost_micros")
        .dropDuplicates(["auction_id"])
    )
    return (
        charged.select("auction_id", "campaign_id")
        .join(priced, "auction_id", "left")
        # An event without its auction, or charged to another campaign than won it, adds nothing here.
        .where(F.col("auction_campaign_id") == F.col("campaign_id"))
        .groupBy("campaign_id")
        .agg(F.sum("billable_cost_micros").alias("spend_micros"))
    )


@dataclass(frozen=True)
class CampaignSpend:
    campaign_id: str
    bill_micros: int
    ledger_micros: int | None  # None: that side was skipped
    auction_log_micros: int | None


def spend_mismatches(
    bill: dict[str, int], ledger: dict[str, int] | None, auction_log: dict[str, int] | None
) -> list[CampaignSpend]:
    """Campaigns whose spend differs between the sides present (a campaign missing from a side spent 0 there)."""
    sides = [side for side in (ledger, auction_log) if side is not None]
    campaigns = sorted(set(bill).union(*sides))
    mismatches = []
    for campaign in campaigns:
        figures = CampaignSpend(
            campaign,
            bill.get(campaign, 0),
            None if ledger is None else ledger.get(campaign, 0),
            None if auction_log is None else auction_log.get(campaign, 0),
        )
        present = {figures.bill_micros} | {
            value for value in (figures.ledger_micros, figures.auction_log_micros) if value is not None
        }
        if len(present) > 1:
            mismatches.append(figures)
    return mismatches


@dataclass
class Reconciliation:
    hour: datetime
    status: str
    checked: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    mismatches: list[CampaignSpend] = field(default_factory=list)

    def report(self) -> str:
        head = f"reconciliation of {self.hour:%Y-%m-%d %H:00} UTC ({self.status}), sides {', '.join(self.checked)}"
        lines = [head] + [f"  {side} skipped: {why}" for side, why in self.skipped.items()]
        if not self.mismatches:
            return "\n".join([*lines, "  spend matches for every campaign"])
        lines.append(f"  {len(self.mismatches)} campaign(s) differ (micros: bill / ledger / auction log):")
        for m in self.mismatches:
            ledger = "skipped" if m.ledger_micros is None else m.ledger_micros
            auction_log = "skipped" if m.auction_log_micros is None else m.auction_log_micros
            lines.append(f"    {m.campaign_id}: {m.bill_micros} / {ledger} / {auction_log}")
        return "\n".join(lines)


# --- Great Expectations gate ---


def _rule(expectation: Any, rule: str) -> Any:
    expectation.meta = {"rule": rule}
    return expectation


def bill_expectations() -> list[Any]:
    """Built fresh per validation: GX expectations are mutable."""
    import great_expectations.expectations as gxe

    return [
        _rule(gxe.ExpectColumnValuesToNotBeNull(column="hour"), "hour present"),
        _rule(gxe.ExpectColumnValuesToNotBeNull(column="currency"), "currency present"),
        _rule(gxe.ExpectColumnValuesToBeBetween(column="spend_micros", min_value=0), "no negative spend"),
        _rule(
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="budget_total_micros",
                column_B="spend_micros",
                or_equal=True,
                ignore_row_if="either_value_is_missing",
            ),
            "spend <= the campaign's total budget",
        ),
        _rule(
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A=CLICKABLE_IMPRESSIONS, column_B="clicks", or_equal=True, ignore_row_if="neither"
            ),
            "clicks <= impressions (of auctions shown in the hour or the auction TTL before it)",
        ),
        _rule(gxe.ExpectCompoundColumnsToBeUnique(column_list=["hour", "campaign_id"]), "one row per campaign"),
    ]


@lru_cache(maxsize=1)
def _gx_context() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def check_bill(bill: pd.DataFrame, hour: datetime) -> dict[str, Any]:
    """Runs the bill's GX suite; raises BillCheckFailed naming each failed rule and its campaigns.

    Returns the validation result (JSON-ready).
    """
    import great_expectations as gx

    frame = bill.reset_index(drop=True)
    context = _gx_context()
    suite = gx.ExpectationSuite(name=f"billing_hourly_{hour:%Y%m%dT%H}", expectations=bill_expectations())
    source = context.data_sources.add_or_update_pandas("billing_hourly")
    asset = source.add_dataframe_asset(suite.name)
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite, result_format={"result_format": "COMPLETE", "partial_unexpected_count": 0})
    failures = []
    for check in result.results:
        if check.success:
            continue
        rule = (check.expectation_config.meta or {}).get("rule", check.expectation_config.type)
        rows = check.result.get("unexpected_index_list") or []
        campaigns = sorted({str(frame.at[int(i), "campaign_id"]) for i in rows if isinstance(i, int | float)})
        where = f"campaigns {campaigns}" if campaigns else f"observed {check.result.get('observed_value')!r}"
        failures.append(f"{rule}: failed for {where}")
    if failures:
        raise BillCheckFailed(
            f"bill for {hour:%Y-%m-%d %H:00} UTC failed its checks, nothing was published:\n  " + "\n  ".join(failures)
        )
    return result.to_json_dict()


# --- I/O: the lake and the campaign store ---


def _read(spark: SparkSession, settings: Settings, table: Table) -> DataFrame | None:
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
    return _as_utc(latest) - timedelta(seconds=watermark_s)


def _as_utc(moment: datetime) -> datetime:
    """A plain UTC datetime. Naive is UTC (Spark returns session-time-zone naive times); pendulum's
    (Airflow's) ``astimezone`` drops the zone, hence the round trip through the timestamp."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return datetime.fromtimestamp(moment.timestamp(), UTC)


@dataclass(frozen=True)
class CampaignStore:
    """The campaign store, read only, when it exists: billing never creates or migrates it."""

    sessions: Any

    @classmethod
    def open(cls, settings: Settings) -> tuple[CampaignStore | None, str]:
        from sqlalchemy import inspect
        from sqlalchemy.engine import make_url

        from auction_service.campaign_store.db import make_engine, make_session_factory

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
        from auction_service.campaign_store import store

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
        from auction_service.campaign_store import store

        with self.sessions() as session:
            ledger = store.spend_by_campaign_hour(session, hour, hour + HOUR)
        return {campaign: micros for (campaign, _hour), micros in ledger.items()}


def publish_bill(spark: SparkSession, settings: Settings, rows: pd.DataFrame, hour: datetime) -> None:
    """MERGE the hour's bill on (hour, campaign_id); rows of that hour the bill lacks are deleted."""
    path = settings.lake_path(Table.GOLD_BILLING_HOURLY)
    records = [tuple(_plain(value) for value in row) for row in rows[list(BILL_COLUMNS)].itertuples(index=False)]
    bill = spark.createDataFrame(records, BILL_DDL)
    if not DeltaTable.isDeltaTable(spark, path):
        bill.write.format("delta").save(path)
        return
    (
        DeltaTable.forPath(spark, path)
        .alias("billed")
        .merge(bill.alias("bill"), "billed.hour = bill.hour AND billed.campaign_id <=> bill.campaign_id")
        .whenMatchedUpdateAll()
        .whenNotMatchedInsertAll()
        .whenNotMatchedBySourceDelete(F.col("billed.hour") == F.lit(hour))
        .execute()
    )


def _plain(value: Any) -> Any:
    """A pandas cell as the Python value Spark takes (None for missing, int, datetime)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return int(value) if hasattr(value, "dtype") and value.dtype.kind in "iu" else value


@dataclass(frozen=True)
class HourBill:
    hour: datetime
    status: BillStatus
    campaigns: int
    spend_micros: int
    stream_watermark: datetime | None


def bill_hour(spark: SparkSession, settings: Settings, hour: datetime, *, now: datetime) -> HourBill:
    """Builds, gates and publishes one hour's bill."""
    hour = hour_start(hour)
    lookback = timedelta(seconds=settings.auction_ttl_s)
    feedback = _read(spark, settings, Table.SILVER_FEEDBACK_EVENTS)
    watermark = stream_watermark(feedback, hour, settings.stream_watermark_s)
    if feedback is None:
        print(f"no {Table.SILVER_FEEDBACK_EVENTS} yet: {hour:%Y-%m-%d %H:00} is billed empty")
        activity = pd.DataFrame()
    else:
        # One small frame per campaign: the bill is finished, gated and published from the driver.
        frame = campaign_activity(in_window(feedback, hour - lookback, hour + HOUR), hour, lookback=lookback)
        activity = frame.toArrow().to_pandas()
    status = bill_status(hour, watermark, now, has_activity=not activity.empty)
    budgets = _campaign_budgets(settings, sorted(activity["campaign_id"]), hour) if not activity.empty else None
    bill = finish_bill(activity, hour, budgets=budgets, status=status, watermark=watermark, billed_at=now)
    check_bill(bill, hour)
    publish_bill(spark, settings, bill, hour)
    campaigns, spend = int(bill["campaign_id"].notna().sum()), int(bill["spend_micros"].sum())
    print(f"billed {hour:%Y-%m-%d %H:00} UTC: {status.value}, {campaigns} campaigns, spend {spend} micros")
    return HourBill(hour, status, campaigns, spend, watermark)


def _campaign_budgets(settings: Settings, campaigns: list[str], hour: datetime) -> dict[str, tuple[int, int]] | None:
    campaign_store, why = CampaignStore.open(settings)
    if campaign_store is None:
        print(f"{why}: the bill's budget columns are left empty")
        return None
    return campaign_store.budgets(campaigns, hour + HOUR)


def reconcile_hour(spark: SparkSession, settings: Settings, hour: datetime) -> Reconciliation:
    """Compares the published bill's spend with the ledger and the auction log; see the module rules."""
    hour = hour_start(hour)
    issued = finance.read_bill(settings, start=hour, end=hour + HOUR)
    if issued.empty:
        raise finance.BillNotFound(f"{hour:%Y-%m-%d %H:00} UTC has no bill to reconcile; bill it first")
    status = str(issued["status"].iloc[0])
    billed = issued[issued["campaign_id"].notna()]
    bill = {row.campaign_id: int(row.spend_micros) for row in billed.itertuples()}
    result = Reconciliation(hour, status, checked=["bill"])

    ledger = None
    campaign_store, why = CampaignStore.open(settings)
    if campaign_store is None:
        result.skipped["ledger"] = why
    else:
        ledger = campaign_store.ledger_spend(hour)
        result.checked.append("ledger")

    auction_log = None
    feedback = _read(spark, settings, Table.SILVER_FEEDBACK_EVENTS)
    auctions = _read(spark, settings, Table.SILVER_AUCTIONS)
    if auctions is None:
        result.skipped["auction log"] = f"no {Table.SILVER_AUCTIONS} table"
    else:
        auction_log = {}
        if feedback is not None:
            lookback = timedelta(seconds=settings.auction_ttl_s)
            charged = charged_events(feedback, hour, lookback)
            # An auction precedes its events by at most the TTL (plus clock skew).
            window = in_window(auctions, hour - 2 * lookback, hour + HOUR + lookback)
            auction_log = {
                row.campaign_id: int(row.spend_micros) for row in auction_log_spend(charged, window).collect()
            }
        result.checked.append("auction log")

    result.mismatches = spend_mismatches(bill, ledger, auction_log)
    path = finance.reconciliation_path(settings.reports_dir, hour)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(result), default=str, indent=2))
    print(result.report())
    if result.mismatches and status != BillStatus.PROVISIONAL:
        raise ReconciliationError(result.report())
    return result


def export_hour(settings: Settings, hour: datetime) -> finance.HourExport:
    exported = finance.export_hour(settings, hour_start(hour))
    print(f"exported {exported.status} bill ({exported.rows} rows): {exported.csv} and {exported.html}")
    return exported


# --- hours, tasks and the command line ---


def hour_start(moment: datetime) -> datetime:
    """A UTC hour start; a naive time is read as UTC, and a time inside an hour is refused."""
    moment = _as_utc(moment)
    if (moment.minute, moment.second, moment.microsecond) != (0, 0, 0):
        raise ValueError(f"{moment.isoformat()} is not the start of an hour")
    return moment


def hours_between(start: datetime, end: datetime) -> Iterator[datetime]:
    hour = hour_start(start)
    while hour < _as_utc(end):
        yield hour
        hour += HOUR


def provisional_hours(settings: Settings, before: datetime) -> list[datetime]:
    """Hours of the last REBILL_LOOKBACK before ``before`` whose bill is still provisional."""
    try:
        issued = finance.read_bill(settings, start=before - REBILL_LOOKBACK, end=before)
    except finance.BillNotFound:
        return []
    pending = issued.loc[issued["status"] == BillStatus.PROVISIONAL.value, "hour"].drop_duplicates()
    return sorted(hour.to_pydatetime() for hour in pending)


def billing_spark(settings: Settings) -> SparkSession:
    from spark_jobs.session import get_spark

    return get_spark("billing", settings, extra={"spark.ui.enabled": "false"})


def bill_task(hour: datetime, *, with_provisional: bool = True) -> list[str]:
    """DAG task: bill the interval's hour (and re-bill earlier provisional ones); returns the hours, ISO."""
    settings = get_settings()
    hour = hour_start(hour)
    hours = [*(provisional_hours(settings, hour) if with_provisional else []), hour]
    spark = billing_spark(settings)
    now = datetime.now(UTC)
    return [bill_hour(spark, settings, each, now=now).hour.isoformat() for each in hours]


def reconcile_task(hours: list[str]) -> list[str]:
    """DAG task: reconcile each billed hour; fails on a final hour's mismatch."""
    settings = get_settings()
    spark = billing_spark(settings)
    return [reconcile_hour(spark, settings, datetime.fromisoformat(hour)).report() for hour in hours]


def export_task(hours: list[str]) -> list[str]:
    """DAG task: the CSV and HTML of each billed hour (no Spark)."""
    settings = get_settings()
    return [str(export_hour(settings, datetime.fromisoformat(hour)).html) for hour in hours]


STEPS = ("bill", "reconcile", "export")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spark_jobs.billing.job", description=__doc__.splitlines()[0])
    parser.add_argument("--hour", type=datetime.fromisoformat, help="the hour to bill, e.g. 2026-11-24T10:00 (UTC)")
    parser.add_argument("--from", dest="start", type=datetime.fromisoformat, help="first hour of a range")
    parser.add_argument("--to", dest="end", type=datetime.fromisoformat, help="end of the range (exclusive)")
    parser.add_argument("--step", choices=[*STEPS, "all"], default="all", help="run one step only (default: all)")
    parser.add_argument(
        "--with-provisional", action="store_true", help="also re-bill the provisional hours before it (as the DAG)"
    )
    args = parser.parse_args(argv)
    if (args.hour is None) == (args.start is None or args.end is None):
        parser.error("give --hour, or both --from and --to")
    try:
        hours = [hour_start(args.hour)] if args.hour else list(hours_between(args.start, args.end))
    except ValueError as exc:
        parser.error(str(exc))
    settings = get_settings()
    steps = STEPS if args.step == "all" else (args.step,)
    if args.with_provisional and "bill" in steps:
        hours = sorted({*provisional_hours(settings, hours[0]), *hours})
    spark = billing_spark(settings) if {"bill", "reconcile"} & set(steps) else None
    now = datetime.now(UTC)
    try:
        for hour in hours:
            if "bill" in steps:
                bill_hour(spark, settings, hour, now=now)
            if "reconcile" in steps:
                reconcile_hour(spark, settings, hour)
            if "export" in steps:
                export_hour(settings, hour)
    except (BillCheckFailed, ReconciliationError, finance.BillNotFound) as exc:
        print(f"billing failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
