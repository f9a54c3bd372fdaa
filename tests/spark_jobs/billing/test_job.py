"""Hourly billing on real Spark + Delta and a real SQLite campaign store: bill, reconcile, and the hours a run covers.

Every expected figure is worked out by hand from the events listed in ``HOUR_10`` (tests/spark_jobs/billing/data.py).
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from decimal import Decimal

import pandas as pd
import pytest

from spark_jobs.billing import job as billing
from spark_jobs.billing import reports as finance
from spark_jobs.billing.ledger import provisional_hours
from tests.conftest import make_settings
from tests.spark_jobs.billing.data import (
    AUCTIONS,
    EXPECTED_CREDIT,
    EXPECTED_HOUR_10,
    HOUR_10,
    LATE,
    NOW,
    H,
    at,
    build_store,
    store_settings,
    write_silver,
)

pytestmark = pytest.mark.slow


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
    assert set(bill["status"]) == {"final"} and bill["held_reason"].isna().all()
    # SIVT found after the ledger charged it is credited: gross (what reconciles) - credit = spend.
    credit = {r.campaign_id: (r.gross_spend_micros, r.ivt_credit_events, r.ivt_credit_micros)
              for r in bill.itertuples()}  # fmt: skip
    assert credit == EXPECTED_CREDIT
    assert all(r.gross_spend_micros - r.ivt_credit_micros == r.spend_micros for r in bill.itertuples())
    assert str(bill.set_index("campaign_id").at["cmp-cpc", "ivt_credit"]) == "0.620000"
    assert dict(zip(bill["campaign_id"], bill["advertiser_id"], strict=True)) == {
        "cmp-cpm": "adv-north", "cmp-cpc": "adv-north", "cmp-cpa": "adv-south",
    }  # fmt: skip
    assert dict(zip(bill["campaign_id"], bill["pricing_model"], strict=True)) == {
        "cmp-cpm": "CPM", "cmp-cpc": "CPC", "cmp-cpa": "CPA",
    }  # fmt: skip
    assert set(bill["currency"]) == {"USD"}
    assert all(isinstance(value, Decimal) for value in bill["spend"])
    assert list(bill["budget_total_micros"]) == [100_000_000, 50_000_000, 10_000_000]  # ordered by spend
    assert set(bill["stream_watermark"]) == {pd.Timestamp("2026-11-24 11:05", tz="UTC")}
    assert set(bill["billed_at"]) == {pd.Timestamp(NOW)}


def test_the_bill_is_provisional_until_the_watermark_passes_the_hour_end_and_the_ivt_review(scenario):
    # Before the late event the newest event was f06 at 11:00: watermark 10:50 < 11:05.
    assert scenario.provisional.status == "provisional"
    assert scenario.provisional.stream_watermark == at(10, 50)
    assert scenario.final.status == "final"
    assert scenario.final.stream_watermark == at(11, 5)
    # The provisional bill already had the same figures; the final run replaced it, rows and all.
    assert scenario.provisional.spend_micros == scenario.final.spend_micros == 3_705 + 930_000 + 5_000_000
    history = finance.bill_history(scenario.settings)
    assert list(history["operation"]) == ["WRITE", "MERGE", "MERGE"]
    issued = finance.read_bill(scenario.settings, version=0)
    assert set(issued["status"]) == {"provisional"} and len(issued) == 3


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


def exported(settings, hour) -> tuple[dict[str, dict], str]:
    export = billing.export_hour(settings, hour)
    rows = {row["campaign_id"]: row for row in csv.DictReader(io.StringIO(export.csv.read_text()))}
    return rows, export.html.read_text()


def test_a_campaign_failing_the_gate_is_held_back_and_the_others_publish_final(spark, tmp_path):
    settings = make_settings(tmp_path, reports_dir=tmp_path / "reports")
    # cmp-cpc: two clicks, no impression anywhere near (a broken feed); cmp-cpa: a clean conversion.
    broken = [("f02", "b1", "click", at(10, 2)), ("f04", "b2", "click", at(10, 31))]
    clean = [("g01", "c1", "impression", at(10, 15)), ("g02", "c1", "click", at(10, 16)),
             ("g03", "c1", "conversion", at(10, 40))]  # fmt: skip
    write_silver(settings, broken + clean + LATE)
    billed = billing.bill_hour(spark, settings, H, now=NOW)
    assert billed.status == "final" and billed.campaigns == 1 and billed.spend_micros == 5_000_000
    assert list(billed.held_back) == ["cmp-cpc"]

    bill = finance.read_bill(settings, start=H, end=H + timedelta(hours=1)).set_index("campaign_id")
    assert dict(bill["status"]) == {"cmp-cpa": "final", "cmp-cpc": "held_back"}
    reason = bill.at["cmp-cpc", "held_reason"]
    assert reason.startswith("quality gate: clicks <= impressions") and pd.isna(bill.at["cmp-cpa", "held_reason"])
    assert billing.reconcile_hour(spark, settings, H).held_back == {"cmp-cpc": reason}  # listed, not raised

    rows, page = exported(settings, H)
    assert (rows["cmp-cpc"]["status"], rows["cmp-cpc"]["held_reason"]) == ("held_back", reason)
    assert (rows["cmp-cpa"]["status"], rows["cmp-cpa"]["held_reason"]) == ("final", "")
    assert "<strong>FINAL</strong>" in page and "Held back (1)" in page and "clicks &lt;= impressions" in page
    assert "5.000000 USD" in page  # the total spend leaves the held-back row out
    # The next scheduled run bills the hour again: a held-back row may pass once the feed is repaired.
    assert provisional_hours(settings, H + timedelta(hours=2)) == [H]


def test_a_campaign_the_ledger_disagrees_with_is_held_back_at_billing(spark, tmp_path):
    settings = store_settings(tmp_path)
    write_silver(settings, HOUR_10 + LATE, auctions=list(AUCTIONS))
    # The ledger charged a cmp-cpa event that never reached the lake.
    lost = {"event_id": "x01", "auction_id": "x1", "campaign_id": "cmp-cpa", "event_type": "conversion",
            "cost_micros": 1_000, "event_time": at(10, 50)}  # fmt: skip
    build_store(settings, HOUR_10 + LATE, extra_spend=[lost])
    billed = billing.bill_hour(spark, settings, H, now=NOW)
    assert billed.held_back == {
        "cmp-cpa": "reconciliation: spend micros bill 5000000 / ledger 5001000 / auction log 5000000"
    }
    bill = finance.read_bill(settings, start=H, end=H + timedelta(hours=1)).set_index("campaign_id")
    assert dict(bill["status"]) == {"cmp-cpm": "final", "cmp-cpc": "final", "cmp-cpa": "held_back"}
    reconciliation = billing.reconcile_hour(spark, settings, H)  # the held-back row is why: nothing raised
    assert [m.campaign_id for m in reconciliation.mismatches] == ["cmp-cpa"]
    rows, page = exported(settings, H)
    assert rows["cmp-cpa"]["held_reason"] == billed.held_back["cmp-cpa"]
    assert "ledger 5001000" in page and "0.933705 USD" in page  # spend of cmp-cpm and cmp-cpc only


@pytest.mark.parametrize(
    ("hour", "start", "end", "step", "message"),
    [
        (None, None, None, "all", "give --hour, or both --from and --to"),
        (at(10, 30), None, None, "all", "not the start of an hour"),
        (None, H, None, "all", "give --hour, or both --from and --to"),
        (H, None, None, "x", "unknown step 'x'"),
    ],
)
def test_a_run_refuses_a_bad_hour_range_or_step(hour, start, end, step, message):
    # What the command line refuses (a usage error, exit 2), as the functions it calls.
    with pytest.raises(ValueError, match=message):
        billing.hours_for(hour, start, end)
        billing.steps_for(step)


def test_a_run_covers_one_hour_or_each_hour_of_a_range():
    assert billing.hours_for(datetime(2026, 11, 24, 10), None, None) == [H]
    assert billing.hours_for(None, H, H + timedelta(hours=2)) == [H, H + timedelta(hours=1)]
    assert billing.steps_for("all") == billing.STEPS == ("bill", "reconcile", "export")
    assert billing.steps_for("reconcile") == ("reconcile",)
    assert billing.needs_spark(("bill",)) and billing.needs_spark(("reconcile",))
    assert not billing.needs_spark(("export",))
