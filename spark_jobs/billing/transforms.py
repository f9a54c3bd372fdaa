"""Pure transforms of hourly billing (spark_jobs.billing.job): the hour's charged events, the bill's rows,
its status, and the reconciliation of spend. No I/O, no session and no clock here: the caller passes the
frames, the hour, the watermark and the time of billing.

Documented rules:
- An hour is [hour, hour + 1 h) UTC of the event time; one bill row per advertiser x campaign.
- Billable event: one the ledger charged (charge_status ``charged``; for records from before the
  status was published, ``cost_micros > 0``) of the type its pricing model pays for (BILLABLE_EVENT:
  CPM impression, CPC click, CPA conversion). Deduplicated on event_id, then at most one per
  auction_id (the earliest, by event time then event id), as the ledger charges an auction once.
  An auction's events arrive within AUCTION_TTL_S of it, so events that far before the hour are
  read too: an auction already charged in an earlier hour is not charged again.
- Gross spend is the sum of those events' integer ``cost_micros``: what the ledger charged, and what
  is reconciled. The IVT credit is the part of it charged for events tagged invalid traffic after
  the charge: SIVT by the stream, and the tags billing gives after the fact (click bursts, fast
  clickers; spark_jobs.ivt_transforms.with_later_ivt). What the service tags GIVT is never charged.
  Spend, what the advertiser pays, is gross - credit. Every money and ratio column is also an exact
  decimal(18,6) (half-up rounding on integers, no binary float anywhere).
- Impressions, clicks and conversions count auctions with such an event in the hour that is a
  delivery (spark_jobs.ivt_transforms.is_delivered: not invalid traffic, not refused by the ledger
  as out of order); a repeated pixel or a double click counts once.
- Status: ``final`` only when the stream's watermark (max event_time in silver/feedback_events -
  STREAM_WATERMARK_S) has passed the hour end by the IVT review, IVT_SIVT_WINDOW_S (and so has the
  clock): the service refuses and the stream quarantines anything older than that watermark, so no
  event of the hour can still arrive, and no click that would tag one of them after the fact
  either. Otherwise ``provisional``, replaced by a later run (the DAG re-bills the provisional
  hours of the last REBILL_LOOKBACK). An hour with no activity is one row with a null campaign_id,
  status ``empty`` (or ``provisional`` while it may still fill).
- Reconciliation: per campaign, bill gross spend == campaign-store ledger == auction log (the
  ``billable_cost_micros`` of the charged events' auctions). A side that is missing is skipped
  and named, never taken as agreeing.
- Held back: a campaign row that fails the quality gate, or (once the hour is closed) the
  reconciliation, is published with status ``held_back`` and its ``held_reason`` instead of
  ``final``; the hour's other campaigns publish as usual. A campaign the ledger charged that the
  lake has no event of gets a held-back row of its own.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from adstream.events import BILLABLE_EVENT, EventType, PricingModel
from spark_jobs.billing.reports import HOUR, BillStatus
from spark_jobs.ivt_transforms import is_charged, is_delivered, is_invalid_traffic

DEFAULT_CURRENCY = "USD"  # the one currency campaigns may have (CampaignSpec); used for an empty hour's row
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
    "status string, stream_watermark timestamp, billed_at timestamp, "
    f"gross_spend_micros bigint, gross_spend {MONEY}, ivt_credit_events bigint, ivt_credit_micros bigint, "
    f"ivt_credit {MONEY}, held_reason string, "
    f"exchange_impressions bigint, media_cost_micros bigint, media_cost {MONEY}, margin_micros bigint"
)
BILL_COLUMNS = tuple(column.split()[0] for column in BILL_DDL.split(", "))
COUNT_COLUMNS = (
    "impressions", "clicks", "conversions", "billable_events", "spend_micros", "gross_spend_micros",
    "ivt_credit_events", "ivt_credit_micros", CLICKABLE_IMPRESSIONS, "exchange_impressions", "media_cost_micros",
    "margin_micros",
)  # fmt: skip


# --- the hour's events and the bill ---


def is_billable() -> Column:
    """The ledger charged the event, and it is the one its pricing model pays for."""
    paid_for = functools.reduce(
        operator.or_,
        [
            (F.col("pricing_model") == model.value) & (F.col("event_type") == event.value)
            for model, event in BILLABLE_EVENT.items()
        ],
    )
    return is_charged() & paid_for


def in_window(frame: DataFrame, start: datetime, end: datetime) -> DataFrame:
    return frame.where((F.col("event_time") >= F.lit(start)) & (F.col("event_time") < F.lit(end)))


def charged_events(feedback: DataFrame, hour: datetime, lookback: timedelta) -> DataFrame:
    """The hour's charged events (auction_id, event_time, event_id, campaign_id, cost_micros, and ``ivt``: tagged
    invalid traffic): per auction, its first billable event, by event time then event id; kept when that event
    lies in the hour.

    A re-delivered event_id is the same event, so it is charged once; a second billable event of an
    auction is never charged. ``feedback`` must reach ``lookback`` before the hour, so an auction
    charged in an earlier hour is seen and not charged again.
    """
    first = (
        in_window(feedback, hour - lookback, hour + HOUR)
        .where(is_billable())
        .groupBy("auction_id")
        # The smallest struct is the earliest event (fields compare in order); one aggregation, no sort.
        .agg(
            F.min(
                F.struct("event_time", "event_id", "campaign_id", "cost_micros", is_invalid_traffic().alias("ivt"))
            ).alias("first")
        )
    )
    return first.select("auction_id", "first.*").where(F.col("event_time") >= F.lit(hour))


def priced_impressions(feedback: DataFrame, hour: datetime, lookback: timedelta) -> DataFrame:
    """Each impression first shown in the hour that an exchange priced in a win notice: auction_id, campaign_id,
    ``exchange_id`` (the win notice's caller: the exchange that bills it) and ``price`` (USD micros per thousand).

    The exchange bills the impression, so a win without one costs nothing; a win notice fired twice is one
    price (the lowest). ``feedback`` without the price column (before OpenRTB wins were recorded) has none.
    """
    schema = "auction_id string, campaign_id string, exchange_id string, price bigint"
    if "exchange_price_cpm_micros" not in feedback.columns:
        return feedback.sparkSession.createDataFrame([], schema)
    window = in_window(feedback, hour - lookback, hour + HOUR)
    caller = F.col("publisher_id") if "publisher_id" in feedback.columns else F.lit(None).cast("string")
    prices = (
        window.where((F.col("event_type") == EventType.WIN.value) & F.col("exchange_price_cpm_micros").isNotNull())
        .groupBy("auction_id")
        # The lowest price, and the exchange that sent it (a struct compares on its first field first).
        .agg(
            F.min(F.struct(F.col("exchange_price_cpm_micros").alias("price"), caller.alias("exchange_id"))).alias("win")
        )
        .select("auction_id", "win.price", "win.exchange_id")
    )
    shown = (
        window.where((F.col("event_type") == EventType.IMPRESSION.value) & is_delivered())
        .groupBy("auction_id", "campaign_id")
        .agg(F.min("event_time").alias("shown_at"))
        .where(F.col("shown_at") >= F.lit(hour))
    )
    return shown.join(prices, "auction_id").select("auction_id", "campaign_id", "exchange_id", "price")


def media_costs(feedback: DataFrame, hour: datetime, lookback: timedelta) -> DataFrame:
    """Per campaign: its priced impressions of the hour (``exchange_impressions``) and the sum of their prices,
    USD micros per thousand (``media_cost_cpm_micros``)."""
    return (
        priced_impressions(feedback, hour, lookback)
        .groupBy("campaign_id")
        .agg(F.count("*").alias("exchange_impressions"), F.sum("price").alias("media_cost_cpm_micros"))
    )


EXCHANGE_COSTS_DDL = "hour timestamp, exchange_id string, exchange_impressions bigint, media_cost_cpm_micros bigint"


def exchange_costs(feedback: DataFrame, hour: datetime, lookback: timedelta) -> DataFrame:
    """gold/exchange_costs_hourly's figures for the hour: per exchange, its priced impressions and the sum of their
    prices per thousand (exact, so any period's cost is rounded once, as an invoice rounds its line)."""
    return (
        priced_impressions(feedback, hour, lookback)
        .groupBy("exchange_id")
        .agg(
            F.count("*").cast("bigint").alias("exchange_impressions"),
            F.sum("price").cast("bigint").alias("media_cost_cpm_micros"),
        )
        .select(
            F.lit(hour).cast("timestamp").alias("hour"), "exchange_id", "exchange_impressions", "media_cost_cpm_micros"
        )
    )


def rounded_quotient(numerator: str, denominator: str) -> Column:
    """round-half-up(numerator / denominator) on non-negative longs, exactly; null when dividing by zero."""
    quotient = F.expr(f"({numerator} * 2 + {denominator}) div ({denominator} * 2)")
    return F.when(F.col(denominator) > 0, quotient).cast("bigint")


def as_money(micros: Column) -> Column:
    """Integer micros as an exact decimal(18,6) amount."""
    return (micros.cast("decimal(20,0)") / F.lit(MICROS)).cast(MONEY)


def campaign_activity(feedback: DataFrame, hour: datetime, *, lookback: timedelta) -> DataFrame:
    """Per advertiser x campaign active in the hour: counts, spend and ratios (the BILL_COLUMNS from hour to
    effective_cpc, the gross spend and IVT credit, plus CLICKABLE_IMPRESSIONS).

    ``feedback`` must reach ``lookback`` before the hour (see ``charged_events``).
    """
    # Each (campaign, auction, event type) once, flagged when it happened in the hour (and when a delivery
    # did): one shuffle instead of a distinct count per event type.
    in_hour = (F.col("event_time") >= F.lit(hour)).cast("int")
    seen = (
        in_window(feedback, hour - lookback, hour + HOUR)
        .groupBy("advertiser_id", "campaign_id", "pricing_model", "currency", "auction_id", "event_type")
        .agg(
            F.max(in_hour).alias("any_in_hour"),
            F.max(in_hour * is_delivered().cast("int")).alias("in_hour"),
        )
    )

    def auctions_with(event_type: EventType, *, hour_only: bool = True) -> Column:
        matches = (F.col("event_type") == event_type.value) & ((F.col("in_hour") == 1) if hour_only else F.lit(True))
        return F.sum(matches.cast("long"))

    activity = (
        seen.groupBy("advertiser_id", "campaign_id", "pricing_model", "currency")
        .agg(
            F.max("any_in_hour").alias("active"),
            auctions_with(EventType.IMPRESSION).alias("impressions"),
            auctions_with(EventType.CLICK).alias("clicks"),
            auctions_with(EventType.CONVERSION).alias("conversions"),
            # The impressions this hour's clicks can belong to: an auction's events come within its TTL.
            auctions_with(EventType.IMPRESSION, hour_only=False).alias(CLICKABLE_IMPRESSIONS),
        )
        .where(F.col("active") == 1)
    )
    ivt = F.col("ivt")
    charged = (
        charged_events(feedback, hour, lookback)
        .groupBy("campaign_id")
        .agg(
            F.count(F.when(~ivt, True)).alias("billable_events"),
            F.sum(F.when(~ivt, F.col("cost_micros")).otherwise(0)).alias("spend_micros"),
            F.sum("cost_micros").alias("gross_spend_micros"),
            F.count(F.when(ivt, True)).alias("ivt_credit_events"),
            F.sum(F.when(ivt, F.col("cost_micros")).otherwise(0)).alias("ivt_credit_micros"),
        )
    )
    spent = ["billable_events", "spend_micros", "gross_spend_micros", "ivt_credit_events", "ivt_credit_micros",
             "exchange_impressions", "media_cost_cpm_micros"]  # fmt: skip
    joined = (
        activity.join(charged, "campaign_id", "left")
        .join(media_costs(feedback, hour, lookback), "campaign_id", "left")
        .fillna(0, subset=spent)
        # The exchange's CPM prices summed, then a thousandth of the sum, rounded half up: exact in integers.
        .withColumn("media_cost_micros", F.expr("(media_cost_cpm_micros * 2 + 1000) div 2000"))
    )
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
        F.col("gross_spend_micros").cast("bigint").alias("gross_spend_micros"),
        as_money(F.col("gross_spend_micros")).alias("gross_spend"),
        F.col("ivt_credit_events").cast("bigint").alias("ivt_credit_events"),
        F.col("ivt_credit_micros").cast("bigint").alias("ivt_credit_micros"),
        as_money(F.col("ivt_credit_micros")).alias("ivt_credit"),
        F.col(CLICKABLE_IMPRESSIONS).cast("bigint").alias(CLICKABLE_IMPRESSIONS),
        F.col("exchange_impressions").cast("bigint").alias("exchange_impressions"),
        F.col("media_cost_micros").cast("bigint").alias("media_cost_micros"),
        as_money(F.col("media_cost_micros")).alias("media_cost"),
        (F.col("spend_micros") - F.col("media_cost_micros")).cast("bigint").alias("margin_micros"),
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
        activity = pd.DataFrame([_no_activity(hour, campaign_id=None)])
    bill = activity.copy()
    budgets = budgets or {}
    bill["budget_total_micros"] = bill["campaign_id"].map(lambda c: budgets[c][0] if c in budgets else None)
    bill["budget_spent_micros"] = bill["campaign_id"].map(lambda c: budgets[c][1] if c in budgets else None)
    for column in (*COUNT_COLUMNS, "budget_total_micros", "budget_spent_micros"):
        bill[column] = bill[column].astype("Int64")
    bill["budget_remaining_micros"] = bill["budget_total_micros"] - bill["budget_spent_micros"]
    bill["budget_remaining"] = bill["budget_remaining_micros"].map(_money, na_action="ignore")
    bill["status"] = status.value
    bill["held_reason"] = None
    bill["stream_watermark"] = pd.Timestamp(watermark) if watermark is not None else pd.NaT
    bill["billed_at"] = pd.Timestamp(billed_at)
    bill["hour"] = pd.Timestamp(hour)
    return bill[[*BILL_COLUMNS, CLICKABLE_IMPRESSIONS]]


def _no_activity(hour: datetime, campaign_id: str | None) -> dict:
    zero = Decimal("0.000000")
    return (
        dict.fromkeys(BILL_COLUMNS)
        | dict.fromkeys(COUNT_COLUMNS, 0)
        | {"hour": hour, "campaign_id": campaign_id, "currency": DEFAULT_CURRENCY}
        | {"spend": zero, "gross_spend": zero, "ivt_credit": zero, "media_cost": zero}
    )


def _money(micros: int) -> Decimal:
    return Decimal(int(micros)).scaleb(-6)


def hold_back(bill: pd.DataFrame, reasons: dict[str, str]) -> pd.DataFrame:
    """The bill with the campaigns of ``reasons`` held back (status ``held_back`` and the reason). A campaign
    without a row (the ledger charged it, the lake has no event of it) gets one with zero counts."""
    if not reasons:
        return bill
    missing = sorted(set(reasons) - set(bill["campaign_id"].dropna()))
    if missing:
        first = bill.iloc[0]
        added = pd.DataFrame([_no_activity(first["hour"], campaign) for campaign in missing], columns=bill.columns)
        added["stream_watermark"], added["billed_at"] = first["stream_watermark"], first["billed_at"]
        bill = pd.concat([bill[bill["campaign_id"].notna()], added], ignore_index=True)  # no empty-hour marker
        for column in (*COUNT_COLUMNS, "budget_total_micros", "budget_spent_micros", "budget_remaining_micros"):
            bill[column] = bill[column].astype("Int64")
    held = bill["campaign_id"].isin(list(reasons))
    bill = bill.copy()
    bill.loc[held, "status"] = BillStatus.HELD_BACK.value
    bill.loc[held, "held_reason"] = bill.loc[held, "campaign_id"].map(reasons)
    return bill


def held_back_reasons(
    gate_failures: dict[str, list[str]], mismatches: list[CampaignSpend], status: BillStatus
) -> dict[str, str]:
    """Why each campaign is held back: the quality rules its row broke, and, once the hour is closed (not
    provisional: the stream may still be catching up with the ledger), a spend the sides disagree on."""
    reasons = {campaign: f"quality gate: {'; '.join(rules)}" for campaign, rules in gate_failures.items()}
    if status != BillStatus.PROVISIONAL:
        for m in mismatches:
            ledger = "skipped" if m.ledger_micros is None else m.ledger_micros
            auction_log = "skipped" if m.auction_log_micros is None else m.auction_log_micros
            why = f"reconciliation: spend micros bill {m.bill_micros} / ledger {ledger} / auction log {auction_log}"
            reasons[m.campaign_id] = f"{reasons[m.campaign_id]}; {why}" if m.campaign_id in reasons else why
    return reasons


def bill_status(
    hour: datetime, watermark: datetime | None, now: datetime, *, has_activity: bool, review_s: int
) -> BillStatus:
    """Final only when the hour is over and the stream's watermark passed its end by ``review_s`` (the
    IVT review: a click burst is found up to that long after its events); partial data never is."""
    closes = hour + HOUR + timedelta(seconds=review_s)
    closed = now >= closes and watermark is not None and watermark >= closes
    if not closed:
        return BillStatus.PROVISIONAL
    return BillStatus.FINAL if has_activity else BillStatus.EMPTY


# --- reconciliation ---


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
    held_back: dict[str, str] = field(default_factory=dict)  # campaign -> why its row was not published

    def report(self) -> str:
        head = f"reconciliation of {self.hour:%Y-%m-%d %H:00} UTC ({self.status}), sides {', '.join(self.checked)}"
        lines = [head] + [f"  {side} skipped: {why}" for side, why in self.skipped.items()]
        lines += [f"  {campaign} held back: {why}" for campaign, why in sorted(self.held_back.items())]
        if not self.mismatches:
            return "\n".join([*lines, "  spend matches for every campaign"])
        lines.append(f"  {len(self.mismatches)} campaign(s) differ (micros: bill / ledger / auction log):")
        for m in self.mismatches:
            ledger = "skipped" if m.ledger_micros is None else m.ledger_micros
            auction_log = "skipped" if m.auction_log_micros is None else m.auction_log_micros
            lines.append(f"    {m.campaign_id}: {m.bill_micros} / {ledger} / {auction_log}")
        return "\n".join(lines)


# --- hours ---


def as_utc(moment: datetime) -> datetime:
    """A plain UTC datetime. Naive is UTC (Spark returns session-time-zone naive times); pendulum's
    (Airflow's) ``astimezone`` drops the zone, hence the round trip through the timestamp."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return datetime.fromtimestamp(moment.timestamp(), UTC)


def hour_start(moment: datetime) -> datetime:
    """A UTC hour start; a naive time is read as UTC, and a time inside an hour is refused."""
    moment = as_utc(moment)
    if (moment.minute, moment.second, moment.microsecond) != (0, 0, 0):
        raise ValueError(f"{moment.isoformat()} is not the start of an hour")
    return moment


def hours_between(start: datetime, end: datetime) -> Iterator[datetime]:
    hour = hour_start(start)
    while hour < as_utc(end):
        yield hour
        hour += HOUR
