"""Great Expectations gates for the bronze tables: one suite per table.

Each expectation is either row-level (its failing rows are quarantined with the
expectation as the reason, and the load goes on) or table-level (a failure stops
the load with a message naming the file and the expectation). Ranges and domains
are those of the real Kaggle files, as the loaders describe them, so the real data passes.
Validation results are written as JSON under ``REPORTS_DIR/quality/`` and as pages of the Data Docs
(``REPORTS_DIR/data_docs/index.html``, ``ingestion.data_docs``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from ingestion import data_docs
from ingestion.records import SOURCE_FILE, SOURCE_ROW, Rejection, truncate_raw
from ingestion.tables import ADS16_ADS, ADS16_RATINGS, ADS16_USERS, ADVERTISING, AMAZON_ADS, BronzeTable

ROW, TABLE = "row", "table"
MAX_ROWS = 100_000_000  # sanity ceiling: a runaway parse, not a real dataset

# Great Expectations takes seconds to import, so it is imported where a suite is built or run:
# every ingestion imports this module, and a re-run that finds nothing changed never pays for GX.


class GateFailed(RuntimeError):
    """A table-level expectation failed: nothing of this load is published."""


def _row(expectation: Any) -> Any:
    expectation.meta = {"level": ROW}
    return expectation


def _table(expectation: Any) -> Any:
    expectation.meta = {"level": TABLE}
    return expectation


def _lineage_checks(table: BronzeTable, min_rows: int, max_rows: int) -> list[Any]:
    import great_expectations.expectations as gxe

    return [
        _table(gxe.ExpectTableColumnsToMatchSet(column_set=[*table.data_columns, SOURCE_FILE, SOURCE_ROW])),
        _table(gxe.ExpectTableRowCountToBeBetween(min_value=min_rows, max_value=max_rows)),
        _table(gxe.ExpectCompoundColumnsToBeUnique(column_list=[SOURCE_FILE, SOURCE_ROW])),
    ]


def _not_null(*columns: str) -> list[Any]:
    import great_expectations.expectations as gxe

    return [_row(gxe.ExpectColumnValuesToNotBeNull(column=column)) for column in columns]


def _between(column: str, low: float, high: float) -> Any:
    import great_expectations.expectations as gxe

    return _row(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high))


def suite_expectations(table: BronzeTable) -> list[Any]:
    """The suite for one bronze table (built fresh: GX expectations are mutable)."""
    import great_expectations.expectations as gxe

    if table is ADVERTISING:
        return [
            *_lineage_checks(table, 1, MAX_ROWS),
            *_not_null(*table.data_columns),
            _between("daily_time_spent_on_site", 32.60, 91.43),
            _between("age", 19, 61),
            _between("area_income", 13996.5, 79484.8),
            _between("daily_internet_usage", 104.78, 269.96),
            _row(gxe.ExpectColumnValueLengthsToBeBetween(column="ad_topic_line", min_value=1, max_value=200)),
            _row(
                gxe.ExpectColumnValuesToBeBetween(
                    column="timestamp", min_value="2016-01-01T00:00:00+00:00", max_value="2016-12-31T23:59:59+00:00"
                )
            ),
        ]
    if table is ADS16_USERS:
        return [
            *_lineage_checks(table, 1, 100_000),
            _table(gxe.ExpectColumnValuesToBeUnique(column="user_id")),
            *_not_null("user_id"),
            _row(gxe.ExpectColumnValuesToMatchRegex(column="user_id", regex=r"^U\d{4}$")),
            _row(gxe.ExpectColumnValuesToBeInSet(column="gender", value_set=["F", "M"])),
            _between("age", 18, 68),
            _between("income", 0, 3),
            *(_between(f"tipi_{question}", -2, 2) for question in range(1, 11)),
        ]
    if table is ADS16_RATINGS:
        return [
            *_lineage_checks(table, 1, 300 * 100_000),
            _table(gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "ad_id"])),
            *_not_null(*table.data_columns),
            _between("rating", 1, 5),
            _between("category_index", 0, 19),
            _between("position", 0, 14),
        ]
    if table is ADS16_ADS:
        return [
            *_lineage_checks(table, 1, 300),
            _table(gxe.ExpectColumnValuesToBeUnique(column="ad_id")),
            *_not_null(*table.data_columns),
            _between("category_index", 0, 19),
            _between("position", 0, 14),
        ]
    if table is AMAZON_ADS:
        return [
            *_lineage_checks(table, 1, MAX_ROWS),
            *_not_null("department", "ad_text"),
            _row(gxe.ExpectColumnValueLengthsToBeBetween(column="ad_text", min_value=1, max_value=2000)),
        ]
    raise KeyError(f"no suite for {table.name}")


@lru_cache(maxsize=1)
def _context() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


@dataclass
class GateOutcome:
    table: str
    accepted: pd.DataFrame
    quarantined: list[Rejection]
    table_failures: list[str] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    validation: Any = None  # the GX result itself, for the Data Docs


def describe(expectation_config: Any) -> str:
    kwargs = {k: v for k, v in expectation_config.kwargs.items() if k not in ("batch_id", "result_format")}
    return f"{expectation_config.type}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


def validate(table: BronzeTable, frame: pd.DataFrame) -> GateOutcome:
    """Runs the table's suite; splits rows into accepted and quarantined; lists table-level failures."""
    import great_expectations as gx

    frame = frame.reset_index(drop=True)
    context = _context()
    name = f"{table.name}"
    try:
        suite = context.suites.get(name)
    except Exception:  # GX raises its own DataContextError for a missing suite
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=suite_expectations(table)))
    source = context.data_sources.add_or_update_pandas(f"bronze_{name}")
    asset = source.add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite, result_format={"result_format": "COMPLETE", "partial_unexpected_count": 0})

    reasons: dict[int, list[str]] = {}
    table_failures = []
    for check in result.results:
        if check.success:
            continue
        level = (check.expectation_config.meta or {}).get("level", TABLE)
        unexpected = check.result.get("unexpected_index_list")
        if level == ROW and unexpected is not None:
            for index in unexpected:
                reasons.setdefault(int(index), []).append(describe(check.expectation_config))
        else:
            files = sorted(frame[SOURCE_FILE].unique())[:5] if SOURCE_FILE in frame else []
            observed = check.result.get("observed_value", check.result.get("unexpected_count"))
            table_failures.append(f"{describe(check.expectation_config)} failed (observed {observed!r}) in {files}")
    quarantined = [
        Rejection(
            frame.at[index, SOURCE_FILE],
            int(frame.at[index, SOURCE_ROW]),
            "; ".join(why),
            truncate_raw(json.dumps(frame.loc[index].to_dict(), default=str)),
        )
        for index, why in sorted(reasons.items())
    ]
    accepted = frame.drop(index=list(reasons)) if reasons else frame
    return GateOutcome(table.name, accepted, quarantined, table_failures, result.to_json_dict(), result)


def save_result(outcome: GateOutcome, reports_dir: Path, load_id: str) -> Path:
    """Writes the GX validation result where a person can open it, as JSON and as a page of the Data Docs
    (``ingestion.data_docs``); returns the JSON's path."""
    if outcome.validation is not None:
        data_docs.publish(outcome.validation, reports_dir, run_name=load_id, batch=f"bronze_{outcome.table}")
    folder = reports_dir / "quality" / outcome.table
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{load_id}.json"
    path.write_text(json.dumps(outcome.result, indent=2, default=str))
    (folder / "latest.json").write_text(path.read_text())
    return path
