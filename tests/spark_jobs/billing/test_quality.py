"""The bill's Great Expectations gate names each failed rule and the campaigns that broke it."""

from __future__ import annotations

import pandas as pd
import pytest

from spark_jobs.billing import quality
from spark_jobs.billing.transforms import CLICKABLE_IMPRESSIONS
from tests.spark_jobs.billing.data import H

pytestmark = pytest.mark.slow


def test_the_gate_names_each_failed_rule_and_campaign():
    bill = pd.DataFrame(
        {
            "hour": [pd.Timestamp(H)] * 3,
            "campaign_id": ["ok", "overspent", "negative"],
            "currency": ["USD", "USD", None],
            "spend_micros": pd.array([10, 2_000, -5], dtype="Int64"),
            "budget_total_micros": pd.array([100, 1_000, None], dtype="Int64"),
            "clicks": pd.array([1, 0, 0], dtype="Int64"),
            CLICKABLE_IMPRESSIONS: pd.array([3, 0, 0], dtype="Int64"),
        }
    )
    with pytest.raises(quality.BillCheckFailed) as failure:
        quality.check_bill(bill, H)
    message = str(failure.value)
    assert "currency present: failed for campaigns ['negative']" in message
    assert "no negative spend: failed for campaigns ['negative']" in message
    assert "spend <= the campaign's total budget: failed for campaigns ['overspent']" in message
    assert "clicks" not in message
    quality.check_bill(bill.iloc[:1], H)  # the good row alone passes
