"""Hourly billing on real Spark + Delta and a real SQLite campaign store.

Every expected figure below is worked out by hand from the events listed in ``HOUR_10``.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import nbformat
import pandas as pd
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from adstream.contracts import Table
from adstream.events import AuctionRecord, CampaignInstruction, CampaignSpec, FeedbackEvent, spark_ddl
from adstream.settings import Settings, child_process_env
from auction_service.campaign_store import store
from auction_service.campaign_store.db import make_engine, make_session_factory, migrate
from auction_service.serving.books import billable_cost_micros
from ml.notebooks import NOTEBOOKS_DIR, execute_notebook
from spark_jobs.billing import job as billing
from spark_jobs.billing import reports as finance
from tests.conftest import make_settings

pytestmark = pytest.mark.slow

H = datetime(2026, 11, 24, 10, tzinfo=UTC)  # the hour under test: [10:00, 11:00)
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
BILLED_TYPE = {"CPM": "impression", "CPC": "click", "CPA": "conversion"}


@dataclass(frozen=True)
class Campaign:
    advertiser_id: str
    pricing_model: str
    clearing_price_micros: int
    cost_micros: int  # of its billable event, by hand: CPM 1,234,567 per mille -> 1234.567 -> 1235
    budget_micros: int


CAMPAIGNS = {
    "cmp-cpm": Campaign("adv-north", "CPM", 1_234_567, 1_235, 10_000_000),
    "cmp-cpc": Campaign("adv-north", "CPC", 310_000, 310_000, 50_000_000),
    "cmp-cpa": Campaign("adv-south", "CPA", 5_000_000, 5_000_000, 100_000_000),
}


def at(hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(2026, 11, 24, hh, mm, ss, tzinfo=UTC)


# auction_id -> (campaign, auction time)
AUCTIONS = {
    "a1": ("cmp-cpm", at(10, 4)), "a2": ("cmp-cpm", at(10, 9)), "a3": ("cmp-cpm", at(10, 19)),
    "b1": ("cmp-cpc", at(9, 59, 30)), "b2": ("cmp-cpc", at(10, 29)), "b3": ("cmp-cpc", at(10, 58)),
    "b4": ("cmp-cpc", at(9, 58)), "b5": ("cmp-cpc", at(9, 48)), "b6": ("cmp-cpc", at(11, 9)),
    "c1": ("cmp-cpa", at(10, 14)),
}  # fmt: skip

# (event_id, auction_id, event_type, time); a repeated tuple is a duplicate delivery of one event.
HOUR_10 = [
    ("e01", "a1", "impression", at(10, 5)), ("e01", "a1", "impression", at(10, 5)),
    ("e02", "a2", "impression", at(10, 10)),
    ("e03", "a2", "impression", at(10, 11)),  # a second billable event of a2: not charged again
    ("e04", "a3", "impression", at(10, 20)),
    ("e05", "a1", "click", at(10, 6)),  # not billable for CPM
    ("f01", "b1", "impression", at(10, 0)),  # the hour's first instant belongs to it
    ("f02", "b1", "click", at(10, 2)),
    ("f03", "b2", "impression", at(10, 30)),
    ("f04", "b2", "click", at(10, 31)), ("f04", "b2", "click", at(10, 31)),
    ("f12", "b2", "video_start", at(10, 30, 30)),
    ("f05", "b3", "impression", at(10, 59, 59)),
    ("f06", "b3", "click", at(11, 0)),  # the next hour
    ("f07", "b4", "impression", at(9, 59)),  # shown in the previous hour ...
    ("f08", "b4", "click", at(10, 1)),  # ... clicked and charged in this one
    ("f09", "b5", "impression", at(9, 49)),
    ("f10", "b5", "click", at(9, 50)),  # charged in the previous hour ...
    ("f11", "b5", "click", at(10, 5)),  # ... so this click of the same auction is not charged
    ("g01", "c1", "impression", at(10, 15)),
    ("g02", "c1", "click", at(10, 16)),
    ("g03", "c1", "conversion", at(10, 40)),
    ("g04", "c1", "conversion", at(10, 45)),  # a second conversion of c1: not charged again
]  # fmt: skip
LATE = [("h01", "b6", "impression", at(11, 10))]  # moves the stream's watermark to 11:00

EXPECTED_HOUR_10 = {
    # campaign: impressions, clicks, conversions, billable events, spend micros, spend, ctr, ecpm, effective cpc,
    #           ledger spend before 11:00, budget remaining
    "cmp-cpm": (3, 1, 0, 3, 3_705, "0.003705", "0.333333", "1.235000", "0.003705", 3_705, "9.996295"),
    "cmp-cpc": (3, 4, 0, 3, 930_000, "0.930000", "1.333333", "310.000000", "0.232500", 1_240_000, "48.760000"),
    "cmp-cpa": (1, 1, 1, 1, 5_000_000, "5.000000", "1.000000", "5000.000000", "5.000000", 5_000_000, "95.000000"),
}


def feedback_row(event_id: str, auction_id: str, event_type: str, moment: datetime) -> dict:
    campaign_id = AUCTIONS[auction_id][0]
    campaign = CAMPAIGNS[campaign_id]
    billable = BILLED_TYPE[campaign.pricing_model] == event_type
    return FeedbackEvent(
        event_id=event_id, event_type=event_type, event_time=moment, auction_id=auction_id, campaign_id=campaign_id,
        advertiser_id=campaign.advertiser_id, ad_id=f"ad-{campaign_id}", pricing_model=campaign.pricing_model,
        cost_micros=campaign.cost_micros if billable else 0,
    ).model_dump()  # fmt: skip


def auction_row(auction_id: str, clearing_price_micros: int | None = None) -> dict:
    campaign_id, moment = AUCTIONS[auction_id]
    campaign = CAMPAIGNS[campaign_id]
    return AuctionRecord(
        auction_id=auction_id, event_time=moment, floor_micros=10_000, candidate_count=2, filled=True,
        campaign_id=campaign_id, advertiser_id=campaign.advertiser_id, ad_id=f"ad-{campaign_id}",
        pricing_model=campaign.pricing_model, bid_micros=campaign.clearing_price_micros * 2,
        clearing_price_micros=clearing_price_micros or campaign.clearing_price_micros, latency_ms=1.0,
    ).model_dump()  # fmt: skip


ARROW_TYPES = {
    "string": pa.string(), "bigint": pa.int64(), "double": pa.float64(), "boolean": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}  # fmt: skip


def arrow_schema(model) -> pa.Schema:
    """The silver table's columns (the streaming job writes ``spark_ddl(model)``) as Arrow types."""
    return pa.schema([(name, ARROW_TYPES[kind]) for name, kind in (c.split() for c in spark_ddl(model).split(", "))])


def write_silver(settings: Settings, events: list[tuple], *, mode: str = "append", auctions=()) -> None:
    """Silver rows written with delta-rs: no Spark job spent on test data."""
    feedback = pa.Table.from_pylist([feedback_row(*event) for event in events], arrow_schema(FeedbackEvent))
    write_deltalake(settings.delta_rs_location(Table.SILVER_FEEDBACK_EVENTS)[0], feedback, mode=mode)
    if auctions:
        log = pa.Table.from_pylist([auction_row(a) for a in auctions], arrow_schema(AuctionRecord))
        write_deltalake(settings.delta_rs_location(Table.SILVER_AUCTIONS)[0], log, mode=mode)


def create_instruction(campaign_id: str, campaign: Campaign) -> CampaignInstruction:
    spec = CampaignSpec(
        advertiser_id=campaign.advertiser_id, ad_id=f"ad-{campaign_id}", category="Automotive",
        pricing_model=campaign.pricing_model, bid_micros=campaign.clearing_price_micros * 2,
        total_budget_micros=campaign.budget_micros, daily_budget_micros=campaign.budget_micros,
        flight_start=H - timedelta(days=1), flight_end=H + timedelta(days=7),
    )  # fmt: skip
    return CampaignInstruction(
        instruction_id=f"create-{campaign_id}", action="create", campaign_id=campaign_id, issued_at=H, campaign=spec
    )


def build_store(settings: Settings, events: list[tuple], extra_spend: list[dict] = ()) -> None:
    """The campaigns, and every billable event charged the way the service does (idempotent per event and auction)."""
    engine = make_engine(settings)
    migrate(settings, engine)
    with make_session_factory(engine)() as session:
        for campaign_id, campaign in CAMPAIGNS.items():
            store.apply_instruction(session, create_instruction(campaign_id, campaign))
        for event in (feedback_row(*e) for e in events):
            if event["cost_micros"] > 0:
                store.record_spend(
                    session, event_id=event["event_id"], auction_id=event["auction_id"],
                    campaign_id=event["campaign_id"], event_type=event["event_type"],
                    cost_micros=event["cost_micros"], event_time=event["event_time"],
                )  # fmt: skip
        for spend in extra_spend:
            store.record_spend(session, **spend)
    engine.dispose()


def store_settings(tmp: Path, **overrides: object) -> Settings:
    return make_settings(
        tmp, campaign_db_url=f"sqlite:///{tmp / 'campaigns.db'}", reports_dir=tmp / "reports", **overrides
    )


@dataclass
class Scenario:
    settings: Settings
    provisional: billing.HourBill
    final: billing.HourBill
    empty: billing.HourBill
    reconciliation: billing.Reconciliation
    exports: dict[datetime, finance.HourExport]


@pytest.fixture(scope="module")
def scenario(spark, tmp_path_factory) -> Scenario:
    """Hour 10 billed before the stream caught up (provisional), then after (final); hour 8 billed empty."""
    settings = store_settings(tmp_path_factory.mktemp("billing"))
    write_silver(settings, HOUR_10, auctions=[a for a in AUCTIONS if a != "b6"])
    build_store(settings, HOUR_10)
    provisional = billing.bill_hour(spark, settings, H, now=NOW)
    write_silver(settings, LATE, auctions=["b6"])
    final = billing.bill_hour(spark, settings, H, now=NOW)
    empty = billing.bill_hour(spark, settings, H - timedelta(hours=2), now=NOW)
    reconciliation = billing.reconcile_hour(spark, settings, H)
    exports = {hour: billing.export_hour(settings, hour) for hour in (H, H - timedelta(hours=2))}
    return Scenario(settings, provisional, final, empty, reconciliation, exports)


def campaign_rows(bill: pd.DataFrame) -> dict[str, tuple]:
    return {
        row.campaign_id: (
            row.impressions, row.clicks, row.conversions, row.billable_events, row.spend_micros, str(row.spend),
            str(row.ctr), str(row.ecpm), str(row.effective_cpc), row.budget_spent_micros, str(row.budget_remaining),
        )
        for row in bill.itertuples()
    }  # fmt: skip


def test_the_hour_is_billed_per_campaign_with_duplicates_and_second_charges_left_out(scenario):
    bill = finance.read_bill(scenario.settings, start=H, end=H + timedelta(hours=1))
    assert campaign_rows(bill) == EXPECTED_HOUR_10
    assert set(bill["status"]) == {"final"}
    assert dict(zip(bill["campaign_id"], bill["advertiser_id"], strict=True)) == {
        "cmp-cpm": "adv-north", "cmp-cpc": "adv-north", "cmp-cpa": "adv-south",
    }  # fmt: skip
    assert dict(zip(bill["campaign_id"], bill["pricing_model"], strict=True)) == {
        "cmp-cpm": "CPM", "cmp-cpc": "CPC", "cmp-cpa": "CPA",
    }  # fmt: skip
    assert set(bill["currency"]) == {"USD"}
    assert all(isinstance(value, Decimal) for value in bill["spend"])
    assert list(bill["budget_total_micros"]) == [100_000_000, 50_000_000, 10_000_000]  # ordered by spend
    assert set(bill["stream_watermark"]) == {pd.Timestamp("2026-11-24 11:00", tz="UTC")}
    assert set(bill["billed_at"]) == {pd.Timestamp(NOW)}


def test_the_bill_is_provisional_until_the_watermark_passes_the_hour_end(scenario):
    # Before the late event the newest event was f06 at 11:00: watermark 10:50 < 11:00.
    assert scenario.provisional.status == "provisional"
    assert scenario.provisional.stream_watermark == at(10, 50)
    assert scenario.final.status == "final"
    assert scenario.final.stream_watermark == at(11, 0)
    # The provisional bill already had the same figures; the final run replaced it, rows and all.
    assert scenario.provisional.spend_micros == scenario.final.spend_micros == 3_705 + 930_000 + 5_000_000
    history = finance.bill_history(scenario.settings)
    assert list(history["operation"]) == ["WRITE", "MERGE", "MERGE"]
    issued = finance.read_bill(scenario.settings, version=0)
    assert set(issued["status"]) == {"provisional"} and len(issued) == 3


@pytest.mark.parametrize(
    ("hour", "watermark", "now", "active", "status"),
    [
        (H, at(11, 0), at(11, 5), True, "final"),  # the watermark exactly at the hour end closes it
        (H, at(10, 59, 59), at(12, 0), True, "provisional"),
        (H, None, at(12, 0), False, "provisional"),  # no stream yet: partial data is never final
        (H, at(12, 0), at(10, 30), True, "provisional"),  # the hour is not over
        (H, at(11, 0), at(11, 5), False, "empty"),
    ],
)
def test_bill_status(hour, watermark, now, active, status):
    assert billing.bill_status(hour, watermark, now, has_activity=active) == status


def test_an_hour_without_events_is_billed_as_one_empty_row(scenario):
    assert scenario.empty.status == "empty"
    bill = finance.read_bill(scenario.settings, start=H - timedelta(hours=2), end=H - timedelta(hours=1))
    assert len(bill) == 1
    row = bill.iloc[0]
    assert pd.isna(row["campaign_id"]) and row["status"] == "empty" and row["currency"] == "USD"
    assert (row["spend_micros"], row["billable_events"], row["spend"]) == (0, 0, Decimal("0"))


def test_reconciliation_matches_bill_ledger_and_auction_log(scenario):
    assert scenario.reconciliation.checked == ["bill", "ledger", "auction log"]
    assert scenario.reconciliation.mismatches == [] and scenario.reconciliation.skipped == {}


def test_a_reconciliation_mismatch_fails_and_lists_each_campaign(spark, scenario, tmp_path):
    # The same lake; a store whose ledger also charged an event silver never received.
    settings = scenario.settings.model_copy(
        update={"campaign_db_url": f"sqlite:///{tmp_path / 'campaigns.db'}", "reports_dir": tmp_path / "reports"}
    )
    lost = {"event_id": "x01", "auction_id": "x1", "campaign_id": "cmp-cpa", "event_type": "conversion",
            "cost_micros": 1_000, "event_time": at(10, 50)}  # fmt: skip
    build_store(settings, HOUR_10 + LATE, extra_spend=[lost])
    with pytest.raises(billing.ReconciliationError) as failure:
        billing.reconcile_hour(spark, settings, H)
    message = str(failure.value)
    assert "1 campaign(s) differ" in message
    assert "cmp-cpa: 5000000 / 5001000 / 5000000" in message


def test_spend_mismatches_name_every_side():
    bill = {"c1": 100, "c2": 200, "c3": 50}
    ledger = {"c1": 100, "c2": 250, "c4": 7}
    auctions = {"c1": 100, "c2": 200, "c3": 40}
    assert billing.spend_mismatches(bill, ledger, auctions) == [
        billing.CampaignSpend("c2", 200, 250, 200),
        billing.CampaignSpend("c3", 50, 0, 40),
        billing.CampaignSpend("c4", 0, 7, 0),
    ]
    # A skipped side is not compared, but is never taken as agreeing.
    assert billing.spend_mismatches(bill, None, auctions) == [
        billing.CampaignSpend("c3", 50, None, 40),
    ]
    assert billing.spend_mismatches(bill, None, None) == []


def test_the_auction_log_prices_like_the_service(spark):
    prices = [0, 1, 999, 1_000, 1_001, 1_234_567, 2_000_000]
    rows = [(f"p{i}-{model}", model, price) for i, price in enumerate(prices) for model in ("CPM", "CPC", "CPA")]
    frame = spark.createDataFrame(rows, "auction_id string, pricing_model string, clearing_price_micros bigint")
    priced = {row.auction_id: row.billable_cost_micros for row in billing.with_billable_cost(frame).collect()}
    assert priced == {auction: billable_cost_micros(model, price) for auction, model, price in rows}


def test_exports_write_csv_and_a_readable_html_report(scenario):
    export = scenario.exports[H]
    assert export.csv == scenario.settings.reports_dir / "billing" / "2026-11-24" / "10.csv"
    assert export.html == scenario.settings.reports_dir / "billing" / "2026-11-24" / "10.html"
    rows = list(csv.DictReader(io.StringIO(export.csv.read_text())))
    assert [(r["campaign_id"], r["spend_micros"], r["spend"], r["status"]) for r in rows] == [
        ("cmp-cpa", "5000000", "5.000000", "final"),
        ("cmp-cpc", "930000", "0.930000", "final"),
        ("cmp-cpm", "3705", "0.003705", "final"),
    ]
    assert rows[0]["hour"] == "2026-11-24T10:00:00+00:00"
    page = export.html.read_text()
    assert "<strong>FINAL</strong>" in page and "<svg" in page
    assert "5.933705 USD" in page  # total spend: 3,705 + 930,000 + 5,000,000 micros
    assert "Reconciliation (bill, ledger, auction log): matches." in page
    assert all(campaign in page for campaign in EXPECTED_HOUR_10)
    assert not re.search(r"(src|href)=\"?https?:", page)  # nothing is fetched from the internet
    empty = scenario.exports[H - timedelta(hours=2)]
    assert [row["status"] for row in csv.DictReader(io.StringIO(empty.csv.read_text()))] == ["empty"]
    assert "No campaign had billable activity in this hour." in empty.html.read_text()


def test_finance_reads_the_bill_with_deltalake_time_travel_and_duckdb(scenario):
    settings = scenario.settings
    history = finance.bill_history(settings)
    issued_at = history.loc[history["version"] == 0, "timestamp"].iloc[0].to_pydatetime()
    as_issued = finance.read_bill(settings, as_of=issued_at)
    assert set(as_issued["status"]) == {"provisional"}
    assert set(as_issued["stream_watermark"]) == {pd.Timestamp("2026-11-24 10:50", tz="UTC")}
    assert set(finance.read_bill(settings, start=H, end=H + timedelta(hours=1))["status"]) == {"final"}

    spend_by_advertiser = """
        SELECT advertiser_id, sum(spend_micros) AS micros, sum(spend) AS spend FROM billing_hourly
        WHERE campaign_id IS NOT NULL GROUP BY advertiser_id ORDER BY advertiser_id
    """
    now = finance.bill_in_duckdb(settings).sql(spend_by_advertiser).fetchall()
    assert now == [("adv-north", 933_705, Decimal("0.933705")), ("adv-south", 5_000_000, Decimal("5.000000"))]
    statuses = "SELECT DISTINCT status FROM billing_hourly WHERE hour = TIMESTAMPTZ '2026-11-24 10:00:00+00'"
    assert finance.bill_in_duckdb(settings, version=0).sql(statuses).fetchall() == [("provisional",)]
    assert finance.bill_in_duckdb(settings).sql(statuses).fetchall() == [("final",)]


def test_the_billing_report_notebook_executes_against_the_bill(scenario, tmp_path):
    target = tmp_path / "billing_report.ipynb"
    execute_notebook(
        NOTEBOOKS_DIR / "billing_report.ipynb",
        target,
        env=child_process_env(LAKE_ROOT=scenario.settings.lake_root),
    )
    cells = [cell for cell in nbformat.read(target, as_version=4).cells if cell.cell_type == "code"]
    outputs = [output for cell in cells for output in cell.outputs]
    assert [output for output in outputs if output.output_type == "error"] == []
    text = "\n".join(output.get("text", "") + output.get("data", {}).get("text/plain", "") for output in outputs)
    assert "cmp-cpa" in text and "5.933705" in text
    assert re.search(r"2026-11-24 10:00:00\+00:00\s+final", text)
    assert any("image/png" in output.get("data", {}) for output in outputs)


def test_a_rerun_replaces_the_hour_exactly_and_leaves_other_hours(spark, tmp_path):
    settings = make_settings(tmp_path, reports_dir=tmp_path / "reports")  # no campaign store: budgets left empty
    shown = [("f01", "b1", "impression", at(10, 0)), ("f05", "b3", "impression", at(10, 59, 59))]
    first = [
        *shown, ("f02", "b1", "click", at(10, 2)), ("g03", "c1", "conversion", at(10, 40)),
        ("f06", "b3", "click", at(11, 0)), ("h01", "b6", "impression", at(12, 30)),
    ]  # fmt: skip
    write_silver(settings, first)
    billing.bill_hour(spark, settings, H, now=NOW)
    billing.bill_hour(spark, settings, H + timedelta(hours=1), now=NOW)
    hour_11 = finance.read_bill(settings, start=H + timedelta(hours=1))
    assert set(finance.read_bill(settings, start=H, end=H + timedelta(hours=1))["campaign_id"]) == {
        "cmp-cpc", "cmp-cpa",
    }  # fmt: skip

    # A backfill after silver was corrected: cmp-cpa's conversion is gone, cmp-cpc has a second click.
    corrected = [event for event in first if event[0] != "g03"]
    corrected += [("f03", "b2", "impression", at(10, 30)), ("f04", "b2", "click", at(10, 31))]
    write_silver(settings, corrected, mode="overwrite")
    billing.bill_hour(spark, settings, H, now=NOW)
    bill = finance.read_bill(settings, start=H, end=H + timedelta(hours=1))
    assert list(zip(bill["campaign_id"], bill["spend_micros"], strict=True)) == [("cmp-cpc", 620_000)]
    assert bill["budget_total_micros"].isna().all()
    pd.testing.assert_frame_equal(finance.read_bill(settings, start=H + timedelta(hours=1)), hour_11)


def test_a_bill_failing_its_checks_is_not_published(spark, tmp_path):
    settings = make_settings(tmp_path, reports_dir=tmp_path / "reports")
    # Two clicks, no impression anywhere near: a broken feed, not a bill.
    write_silver(settings, [("f02", "b1", "click", at(10, 2)), ("f04", "b2", "click", at(10, 31))])
    with pytest.raises(billing.BillCheckFailed, match=r"clicks <= impressions .*: failed for campaigns \['cmp-cpc'\]"):
        billing.bill_hour(spark, settings, H, now=NOW)
    with pytest.raises(finance.BillNotFound):
        finance.read_bill(settings)


def test_the_gate_names_each_failed_rule_and_campaign():
    bill = pd.DataFrame(
        {
            "hour": [pd.Timestamp(H)] * 3,
            "campaign_id": ["ok", "overspent", "negative"],
            "currency": ["USD", "USD", None],
            "spend_micros": pd.array([10, 2_000, -5], dtype="Int64"),
            "budget_total_micros": pd.array([100, 1_000, None], dtype="Int64"),
            "clicks": pd.array([1, 0, 0], dtype="Int64"),
            billing.CLICKABLE_IMPRESSIONS: pd.array([3, 0, 0], dtype="Int64"),
        }
    )
    with pytest.raises(billing.BillCheckFailed) as failure:
        billing.check_bill(bill, H)
    message = str(failure.value)
    assert "currency present: failed for campaigns ['negative']" in message
    assert "no negative spend: failed for campaigns ['negative']" in message
    assert "spend <= the campaign's total budget: failed for campaigns ['overspent']" in message
    assert "clicks" not in message
    billing.check_bill(bill.iloc[:1], H)  # the good row alone passes


def test_hours_must_be_whole_utc_hours():
    assert billing.hour_start(datetime(2026, 11, 24, 10)) == H  # naive is UTC
    with pytest.raises(ValueError, match="not the start of an hour"):
        billing.hour_start(at(10, 30))
    assert list(billing.hours_between(H, H + timedelta(hours=3))) == [H + timedelta(hours=i) for i in range(3)]


@pytest.mark.parametrize(
    "argv",
    [[], ["--hour", "2026-11-24T10:30"], ["--from", "2026-11-24T10:00"], ["--hour", "2026-11-24T10:00", "--step", "x"]],
)
def test_the_command_line_refuses_a_bad_hour_or_range(argv, capsys):
    with pytest.raises(SystemExit) as refused:
        billing.main(argv)
    assert refused.value.code == 2
    assert "usage: python -m spark_jobs.billing.job" in capsys.readouterr().err
