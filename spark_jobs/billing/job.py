"""Hourly billing for finance: silver/feedback_events -> gold/billing_hourly, checked, reconciled, exported.

Each hour goes through three steps (the command line `adstream bill` and the DAG hourly_billing run them):
1. bill: the hour's bill is built (spark_jobs.billing.transforms states its rules), gated by Great
   Expectations (spark_jobs.billing.quality) and reconciled, and only then published
   (spark_jobs.billing.ledger): write-audit-publish. Reconciliation: per campaign, the bill's gross
   spend == campaign-store ledger (``spend_by_campaign_hour``) == auction log (``billable_cost_micros``
   of the charged events' auctions in silver/auctions); a side without its store or table is skipped
   and named. A campaign row that fails the gate, or, in a closed hour, the reconciliation, is
   published ``held_back`` with its reason, and the hour's other campaigns publish ``final``; for a
   provisional hour (the stream may lag the ledger) a mismatch is listed, and held back only if it
   lasts until the hour closes. The result is written beside the exports
   (reports/billing/<day>/<HH>.reconciliation.json). The same run counts the hour's invalid traffic
   into gold/ivt_hourly (spark_jobs.ivt), and writes what each exchange's win notices priced into
   gold/exchange_costs_hourly: the side of an exchange's invoice we check (spark_jobs.billing.invoices).
2. reconcile: the published bill checked again against the ledger and the auction log; a final row
   that no longer agrees (the ledger changed after billing) fails the run. Held-back and provisional
   rows are listed, not raised.
3. export: the hour's CSV and HTML report for finance (spark_jobs.billing.reports), held-back rows
   and their reasons included, and the multi-hour finance report beside them: the day's
   (reports/billing/<day>/finance.html) and the latest hours' (reports/billing/finance.html).

A scheduled run also re-bills the still-provisional hours, and those holding a campaign back, of the last
REBILL_LOOKBACK before its hour: they are final once the stream's watermark has passed them and they reconcile.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from adstream.contracts import Table
from adstream.settings import Settings
from spark_jobs import ivt
from spark_jobs.billing import reports
from spark_jobs.billing.ledger import (
    CampaignStore,
    auction_log_by_campaign,
    campaign_budgets,
    provisional_hours,
    publish_bill,
    publish_exchange_costs,
    read_table,
    stream_watermark,
)
from spark_jobs.billing.quality import BillCheckFailed, failed_rows
from spark_jobs.billing.reports import HOUR, BillNotFound, BillStatus, hour_status
from spark_jobs.billing.transforms import (
    EXCHANGE_COSTS_DDL,
    Reconciliation,
    bill_status,
    campaign_activity,
    exchange_costs,
    finish_bill,
    held_back_reasons,
    hold_back,
    hour_start,
    hours_between,
    spend_mismatches,
)
from spark_jobs.ivt_transforms import tagged_between, with_event_columns

SPARK_APP = "billing"
SPARK_CONF = {"spark.ui.enabled": "false"}
STEPS = ("bill", "reconcile", "export")
STEP_CHOICES = (*STEPS, "all")


class ReconciliationError(RuntimeError):
    """Bill, ledger and auction log disagree on the spend of a campaign published final."""


# What a billing run fails with (the command exits 1 on these).
FAILURES = (BillCheckFailed, ReconciliationError, BillNotFound)


@dataclass(frozen=True)
class HourBill:
    hour: datetime
    status: BillStatus  # the hour's; a held-back campaign's row says held_back
    campaigns: int
    spend_micros: int  # of the campaigns published, held-back ones left out
    stream_watermark: datetime | None
    held_back: dict[str, str]  # campaign -> why


# --- one hour ---


def bill_hour(spark: SparkSession, settings: Settings, hour: datetime, *, now: datetime) -> HourBill:
    """Builds, gates, reconciles and publishes one hour's bill, and counts its invalid traffic."""
    hour = hour_start(hour)
    lookback = timedelta(seconds=settings.auction_ttl_s)
    feedback = read_table(spark, settings, Table.SILVER_FEEDBACK_EVENTS)
    feedback = with_event_columns(feedback) if feedback is not None else None
    watermark = stream_watermark(feedback, hour, settings.stream_watermark_s)
    exchanges = None
    if feedback is None:
        print(f"no {Table.SILVER_FEEDBACK_EVENTS} yet: {hour:%Y-%m-%d %H:00} is billed empty")
        activity = pd.DataFrame()
    else:
        # One small frame per campaign (the bill is finished, gated and published from the driver) and a row per
        # exchange, both from one read and tagging of the hour's events.
        events = tagged_between(feedback, hour - lookback, hour + HOUR, window_s=settings.ivt_sivt_window_s).persist()
        try:
            activity = campaign_activity(events, hour, lookback=lookback).toArrow().to_pandas()
            exchanges = exchange_costs(events, hour, lookback).collect()
        finally:
            events.unpersist()
    status = bill_status(hour, watermark, now, has_activity=not activity.empty, review_s=settings.ivt_sivt_window_s)
    budgets = campaign_budgets(settings, sorted(activity["campaign_id"]), hour) if not activity.empty else None
    bill = finish_bill(activity, hour, budgets=budgets, status=status, watermark=watermark, billed_at=now)
    gate = failed_rows(bill, hour, reports_dir=settings.reports_dir)
    billed = bill[bill["campaign_id"].notna()]
    gross = {row.campaign_id: int(row.gross_spend_micros) for row in billed.itertuples()}
    reconciliation = _reconcile(spark, settings, feedback, hour, gross, status.value)
    held = held_back_reasons(gate, reconciliation.mismatches, status)
    reconciliation.held_back = held
    bill = hold_back(bill, held)
    publish_bill(spark, settings, bill, hour)
    if exchanges is not None:
        costs = spark.createDataFrame(exchanges, EXCHANGE_COSTS_DDL).withColumn(
            "billed_at", F.lit(now).cast("timestamp")
        )
        publish_exchange_costs(spark, costs, settings, hour)
    _write_reconciliation(settings, reconciliation)
    ivt.build_ivt_hour(spark, settings, hour, computed_at=now)
    published = bill[bill["campaign_id"].notna() & (bill["status"] != BillStatus.HELD_BACK.value)]
    campaigns, spend = len(published), int(published["spend_micros"].sum())
    held_note = f", {len(held)} held back ({', '.join(sorted(held))})" if held else ""
    print(f"billed {hour:%Y-%m-%d %H:00} UTC: {status.value}, {campaigns} campaigns, spend {spend} micros{held_note}")
    return HourBill(hour, status, campaigns, spend, watermark, held)


def _reconcile(
    spark: SparkSession, settings: Settings, feedback: DataFrame | None, hour: datetime, bill: dict[str, int],
    status: str,
) -> Reconciliation:  # fmt: skip
    """The bill's gross spend per campaign against the ledger and the auction log (the sides that exist)."""
    result = Reconciliation(hour, status, checked=["bill"])
    ledger = None
    campaign_store, why = CampaignStore.open(settings)
    if campaign_store is None:
        result.skipped["ledger"] = why
    else:
        ledger = campaign_store.ledger_spend(hour)
        result.checked.append("ledger")
    auction_log = auction_log_by_campaign(spark, settings, feedback, hour)
    if auction_log is None:
        result.skipped["auction log"] = f"no {Table.SILVER_AUCTIONS} table"
    else:
        result.checked.append("auction log")
    result.mismatches = spend_mismatches(bill, ledger, auction_log)
    return result


def _write_reconciliation(settings: Settings, result: Reconciliation) -> None:
    path = reports.reconciliation_path(settings.reports_dir, result.hour)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(result), default=str, indent=2))


def reconcile_hour(spark: SparkSession, settings: Settings, hour: datetime) -> Reconciliation:
    """Checks the published bill's gross spend against the ledger and the auction log again; raises
    ReconciliationError when a campaign published final (or missing from a closed hour) disagrees."""
    hour = hour_start(hour)
    issued = reports.read_bill(settings, start=hour, end=hour + HOUR)
    if issued.empty:
        raise BillNotFound(f"{hour:%Y-%m-%d %H:00} UTC has no bill to reconcile; bill it first")
    status = hour_status(issued)
    billed = issued[issued["campaign_id"].notna()]
    # A row published before the gross column existed: its spend was the gross.
    spend = billed["spend_micros"]
    gross = billed["gross_spend_micros"].fillna(spend) if "gross_spend_micros" in billed else spend
    bill = {campaign: int(micros) for campaign, micros in zip(billed["campaign_id"], gross, strict=True)}
    held_rows = billed[billed["status"] == BillStatus.HELD_BACK.value]
    held = {row.campaign_id: str(row.held_reason) for row in held_rows.itertuples()}
    feedback = read_table(spark, settings, Table.SILVER_FEEDBACK_EVENTS)
    result = _reconcile(spark, settings, with_event_columns(feedback) if feedback is not None else None, hour, bill,
                        status)  # fmt: skip
    result.held_back = held
    _write_reconciliation(settings, result)
    print(result.report())
    unheld = [m for m in result.mismatches if m.campaign_id not in held]
    if unheld and status != BillStatus.PROVISIONAL:
        raise ReconciliationError(result.report())
    return result


def export_hour(settings: Settings, hour: datetime) -> reports.HourExport:
    exported = reports.export_hour(settings, hour_start(hour))
    print(
        f"exported {exported.status} bill ({exported.rows} rows): {exported.csv}, {exported.html}, {exported.finance}"
    )
    return exported


# --- several hours: the DAG's tasks and the command line ---


def as_hour(value: datetime | str) -> datetime:
    """An hour as a datetime; ISO text (as tasks pass hours to each other) is parsed."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def bill_hours(
    spark: SparkSession, settings: Settings, hour: datetime, *, with_provisional: bool = True, now: datetime
) -> list[HourBill]:
    """Bills ``hour``, after re-billing the still-provisional hours before it when ``with_provisional``."""
    hour = hour_start(hour)
    hours = [*(provisional_hours(settings, hour) if with_provisional else []), hour]
    return [bill_hour(spark, settings, each, now=now) for each in hours]


def reconcile_hours(spark: SparkSession, settings: Settings, hours: Iterable[datetime | str]) -> list[Reconciliation]:
    """Reconciles each billed hour; raises ReconciliationError on a final hour's mismatch."""
    return [reconcile_hour(spark, settings, as_hour(hour)) for hour in hours]


def export_hours(settings: Settings, hours: Iterable[datetime | str]) -> list[reports.HourExport]:
    """The CSV and HTML of each billed hour (no Spark)."""
    return [export_hour(settings, as_hour(hour)) for hour in hours]


def hours_for(hour: datetime | None, start: datetime | None, end: datetime | None) -> list[datetime]:
    """The hours a run covers: one ``hour``, or every hour of [start, end). Raises ValueError otherwise."""
    if (hour is None) == (start is None or end is None):
        raise ValueError("give --hour, or both --from and --to")
    return [hour_start(hour)] if hour is not None else list(hours_between(start, end))


def steps_for(step: str) -> tuple[str, ...]:
    """The steps a run takes: one of STEPS, or all of them for ``all``."""
    if step not in STEP_CHOICES:
        raise ValueError(f"unknown step {step!r}: choose from {', '.join(STEP_CHOICES)}")
    return STEPS if step == "all" else (step,)


def needs_spark(steps: Sequence[str]) -> bool:
    return bool({"bill", "reconcile"} & set(steps))


def run_steps(
    spark: SparkSession | None,
    settings: Settings,
    hours: list[datetime],
    steps: Sequence[str],
    *,
    with_provisional: bool,
    now: datetime,
) -> None:
    """Takes each hour through ``steps`` in order; with ``with_provisional`` (and a bill step) the provisional
    hours before the first are billed too. Raises one of FAILURES; ``spark`` may be None when not ``needs_spark``."""
    if with_provisional and "bill" in steps:
        hours = sorted({*provisional_hours(settings, hours[0]), *hours})
    for hour in hours:
        if "bill" in steps:
            bill_hour(spark, settings, hour, now=now)
        if "reconcile" in steps:
            reconcile_hour(spark, settings, hour)
        if "export" in steps:
            export_hour(settings, hour)
