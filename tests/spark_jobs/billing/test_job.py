"""Hourly billing on real Spark + Delta and a real SQLite campaign store: bill, reconcile, and the hours a run covers.

Every expected figure is worked out by hand from the events listed in ``HOUR_10`` (tests/spark_jobs/billing/data.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pandas as pd
import pytest

from spark_jobs.billing import job as billing
from spark_jobs.billing import reports as finance
from spark_jobs.billing.quality import BillCheckFailed
from tests.conftest import make_settings
from tests.spark_jobs.billing.data import EXPECTED_HOUR_10, HOUR_10, LATE, NOW, H, at, build_store, write_silver

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


def test_a_bill_failing_its_checks_is_not_published(spark, tmp_path):
    settings = make_settings(tmp_path, reports_dir=tmp_path / "reports")
    # Two clicks, no impression anywhere near: a broken feed, not a bill.
    write_silver(settings, [("f02", "b1", "click", at(10, 2)), ("f04", "b2", "click", at(10, 31))])
    with pytest.raises(BillCheckFailed, match=r"clicks <= impressions .*: failed for campaigns \['cmp-cpc'\]"):
        billing.bill_hour(spark, settings, H, now=NOW)
    with pytest.raises(finance.BillNotFound):
        finance.read_bill(settings)


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
