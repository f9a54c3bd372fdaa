"""The bill's Great Expectations gate: each failing campaign with its broken rules, and failures of the whole bill."""

from __future__ import annotations

import pandas as pd
import pytest

from spark_jobs.billing import quality
from spark_jobs.billing.transforms import CLICKABLE_IMPRESSIONS
from tests.spark_jobs.billing.data import H

pytestmark = pytest.mark.slow


def bill_of(campaigns: list[str | None], **columns: list) -> pd.DataFrame:
    rows = len(campaigns)
    frame = {
        "hour": [pd.Timestamp(H)] * rows,
        "campaign_id": campaigns,
        "currency": ["USD"] * rows,
        "spend_micros": pd.array([10] * rows, dtype="Int64"),
        "gross_spend_micros": pd.array([10] * rows, dtype="Int64"),
        "budget_total_micros": pd.array([100] * rows, dtype="Int64"),
        "clicks": pd.array([0] * rows, dtype="Int64"),
        CLICKABLE_IMPRESSIONS: pd.array([0] * rows, dtype="Int64"),
    }
    for name, values in columns.items():
        frame[name] = values if name == "currency" else pd.array(values, dtype="Int64")
    return pd.DataFrame(frame)


def test_the_gate_names_each_failing_campaign_and_its_rules():
    bill = bill_of(
        ["ok", "overspent", "negative", "clicky"],
        currency=["USD", "USD", None, "USD"],
        spend_micros=[10, 2_000, -5, 10],
        gross_spend_micros=[10, 2_000, -5, 10],
        budget_total_micros=[100, 1_000, None, 100],
        clicks=[1, 0, 0, 4],
        **{CLICKABLE_IMPRESSIONS: [3, 0, 0, 1]},
    )
    assert quality.failed_rows(bill, H) == {
        "negative": ["currency present", "no negative spend"],
        "overspent": ["spend <= the campaign's total budget"],
        "clicky": ["clicks <= impressions (of auctions shown in the hour or the auction TTL before it)"],
    }
    assert quality.failed_rows(bill.iloc[:1], H) == {}  # the good row alone passes


def test_a_failure_no_campaign_row_answers_for_fails_the_whole_bill():
    with pytest.raises(quality.BillCheckFailed, match="one row per campaign: failed for rows of campaigns"):
        quality.failed_rows(bill_of(["twice", "twice", "ok"]), H)
    with pytest.raises(quality.BillCheckFailed, match="currency present: failed"):
        quality.failed_rows(bill_of([None], currency=[None]), H)  # the empty hour's row
