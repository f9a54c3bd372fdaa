"""Publishing a bill: the MERGE replaces the billed hour exactly and leaves the other hours as they were."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from spark_jobs.billing import job as billing
from spark_jobs.billing import reports as finance
from tests.conftest import make_settings
from tests.spark_jobs.billing.data import NOW, H, at, write_silver

pytestmark = pytest.mark.slow


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
