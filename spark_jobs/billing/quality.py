"""The bill's quality gate: Great Expectations checks a bill must pass before it is published.

Write-audit-publish: spark_jobs.billing.job builds the hour's bill, this gate checks it, and only rows
that pass are published as they are (spark_jobs.billing.ledger.publish_bill). The rules: no negative
spend, gross spend within the campaign's total budget, clicks within the impressions they could belong
to, currency and hour present, one row per campaign. A row that breaks a rule is held back, named with
its rules, and the other campaigns' rows publish; a failure no campaign row can answer for (two rows
for one campaign, a broken row without a campaign) fails the whole bill, and nothing is published.

Great Expectations is imported inside the functions: it is heavy, and only the bill step needs it.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from ingestion import data_docs
from spark_jobs.billing.transforms import CLICKABLE_IMPRESSIONS


class BillCheckFailed(RuntimeError):
    """The bill as a whole failed a Great Expectations check: nothing of it was published."""


def _rule(expectation: Any, rule: str, *, per_row: bool = True) -> Any:
    expectation.meta = {"rule": rule, "per_row": per_row}
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
                column_B="gross_spend_micros",
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
        _rule(
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["hour", "campaign_id"]),
            "one row per campaign",
            per_row=False,
        ),
    ]


@lru_cache(maxsize=1)
def _gx_context() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def failed_rows(bill: pd.DataFrame, hour: datetime, *, reports_dir: Path | None = None) -> dict[str, list[str]]:
    """Runs the bill's GX suite; returns each failing campaign's broken rules (empty: the bill passed).

    With ``reports_dir`` the result is added to the Data Docs there (``ingestion.data_docs``), passed or not.
    Raises BillCheckFailed, naming each rule, when a failure is of the whole bill (see the module docstring).
    """
    import great_expectations as gx

    frame = bill.reset_index(drop=True)
    context = _gx_context()
    suite = gx.ExpectationSuite(name=f"billing_hourly_{hour:%Y%m%dT%H}", expectations=bill_expectations())
    source = context.data_sources.add_or_update_pandas("billing_hourly")
    asset = source.add_dataframe_asset(suite.name)
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite, result_format={"result_format": "COMPLETE", "partial_unexpected_count": 0})
    if reports_dir is not None:
        data_docs.publish(result, reports_dir, run_name=f"bill-{hour:%Y%m%dT%H}", batch="billing_hourly")
    by_campaign: dict[str, list[str]] = {}
    whole_bill = []
    for check in result.results:
        if check.success:
            continue
        meta = check.expectation_config.meta or {}
        rule = meta.get("rule", check.expectation_config.type)
        rows = [int(i) for i in check.result.get("unexpected_index_list") or [] if isinstance(i, int | float)]
        campaigns = [frame.at[i, "campaign_id"] for i in rows]
        if not meta.get("per_row", True) or not campaigns or any(pd.isna(c) for c in campaigns):
            where = f"rows of campaigns {sorted(map(str, campaigns))}" if campaigns else "the bill"
            whole_bill.append(f"{rule}: failed for {where} (observed {check.result.get('observed_value')!r})")
            continue
        for campaign in sorted(set(campaigns)):
            by_campaign.setdefault(campaign, []).append(rule)
    if whole_bill:
        raise BillCheckFailed(
            f"bill for {hour:%Y-%m-%d %H:00} UTC failed its checks, nothing was published:\n  "
            + "\n  ".join(whole_bill)
        )
    return by_campaign
