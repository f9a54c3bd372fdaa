"""Finance's side of the bill: the CSV and HTML exports, delta-rs time travel, DuckDB, and the report notebook."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from decimal import Decimal

import nbformat
import pandas as pd
import pytest

from adstream.settings import child_process_env
from ml.notebooks import NOTEBOOKS_DIR, execute_notebook
from spark_jobs.billing import reports as finance
from tests.spark_jobs.billing.data import EXPECTED_HOUR_10, H

pytestmark = pytest.mark.slow


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
