"""The bill's quality gate: Great Expectations checks a bill must pass before it is published.

Write-audit-publish: spark_jobs.billing.job builds the hour's bill, this gate checks it, and only a
bill that passes is published (spark_jobs.billing.ledger.publish_bill). The rules: no negative spend,
spend within the campaign's total budget, clicks within the impressions they could belong to,
currency and hour present, one row per campaign. A failure names each broken rule and its campaigns.

Great Expectations is imported inside the functions: it is heavy, and only the bill step needs it.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

import pandas as pd

from spark_jobs.billing.transforms import CLICKABLE_IMPRESSIONS


class BillCheckFailed(RuntimeError):
    """The bill failed a Great Expectations check: nothing of it was published."""


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
