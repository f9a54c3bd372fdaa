"""The hourly bill for finance, without Spark: gold/billing_hourly read with delta-rs, queried with DuckDB, exported.

    from spark_jobs.billing.reports import read_bill, bill_in_duckdb
    bill = read_bill(start=datetime(2026, 11, 24, tzinfo=UTC))            # pandas, the current bill
    issued = read_bill(version=3)                                         # the bill as version 3 issued it
    issued = read_bill(as_of=datetime(2026, 11, 24, 12, 5, tzinfo=UTC))  # ... or as it stood at that time
    bill_in_duckdb().sql("SELECT advertiser_id, sum(spend) FROM billing_hourly GROUP BY 1").df()

One row per (hour, campaign_id); an hour without billable activity is one row whose
campaign_id is null (status ``empty``, or ``provisional`` while it may still fill). A campaign row
that failed the quality gate or the reconciliation has status ``held_back`` and a ``held_reason``;
the hour's other rows carry the hour's status. Money is integer micros (``*_micros``) plus
decimal(18,6) columns in the row's currency: ``spend`` is what the advertiser pays, ``gross_spend``
what the ledger charged, and ``ivt_credit`` (gross - spend) the part charged for invalid traffic.
``spark_jobs.billing.job`` writes the table; this module never imports pyspark.
"""

from __future__ import annotations

import csv
import html
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from adstream.contracts import Table
from adstream.settings import Settings, get_settings

HOUR = timedelta(hours=1)
TOP_CAMPAIGNS = 10
DUCKDB_VIEW = "billing_hourly"


class BillStatus(StrEnum):
    FINAL = "final"  # the stream's watermark passed the hour end: no event of the hour can still arrive
    PROVISIONAL = "provisional"  # the hour may still change; a later run replaces it
    EMPTY = "empty"  # final, and no billable activity in the hour
    HELD_BACK = "held_back"  # this campaign's row failed the quality gate or the reconciliation: see held_reason


def hour_status(bill: pd.DataFrame) -> str:
    """The status of the hour's bill: its rows' that are not held back (``held_back`` if all are)."""
    statuses = [status for status in bill["status"].astype(str) if status != BillStatus.HELD_BACK]
    return statuses[0] if statuses else BillStatus.HELD_BACK.value


class BillNotFound(LookupError):
    """gold/billing_hourly does not exist yet, or holds no row for the hour asked."""


def bill_table(
    settings: Settings | None = None, *, version: int | None = None, as_of: datetime | None = None
) -> DeltaTable:
    """gold/billing_hourly with delta-rs, at its newest version, at ``version``, or as it stood at ``as_of``."""
    if version is not None and as_of is not None:
        raise ValueError("pass a version or a timestamp, not both")
    settings = settings or get_settings()
    uri, options = settings.delta_rs_location(Table.GOLD_BILLING_HOURLY)
    if not DeltaTable.is_deltatable(uri, options):
        raise BillNotFound(f"no bill yet: {uri} is not a Delta table (run `adstream bill --hour …`)")
    table = DeltaTable(uri, storage_options=options or None)
    if version is not None:
        table.load_as_version(version)
    elif as_of is not None:
        table.load_as_version(_utc(as_of))
    return table


def read_bill(
    settings: Settings | None = None,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    version: int | None = None,
    as_of: datetime | None = None,
) -> pd.DataFrame:
    """Bill rows for hours in ``[start, end)`` (all hours by default) as pandas, ordered by hour and spend."""
    dataset = bill_table(settings, version=version, as_of=as_of).to_pyarrow_dataset()
    rows = dataset.to_table(filter=_hour_filter(start, end)).to_pandas()
    return rows.sort_values(["hour", "spend_micros", "campaign_id"], ascending=[True, False, True]).reset_index(
        drop=True
    )


def bill_history(settings: Settings | None = None) -> pd.DataFrame:
    """Every version of the bill table: when it was written and by which operation (for time travel)."""
    history = pd.DataFrame(bill_table(settings).history())
    history["timestamp"] = pd.to_datetime(history["timestamp"], unit="ms", utc=True)
    return history[["version", "timestamp", "operation"]].sort_values("version").reset_index(drop=True)


def bill_in_duckdb(
    settings: Settings | None = None,
    *,
    version: int | None = None,
    as_of: datetime | None = None,
    connection: duckdb.DuckDBPyConnection | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the bill as the view ``billing_hourly``.

    DuckDB's delta extension is not installable offline, so delta-rs resolves the snapshot
    (any version) and DuckDB scans it as an Arrow dataset, with filters pushed down.
    """
    connection = connection or duckdb.connect()
    connection.register(DUCKDB_VIEW, bill_table(settings, version=version, as_of=as_of).to_pyarrow_dataset())
    return connection


def _utc(moment: datetime) -> datetime:
    # Through the timestamp: pendulum (Airflow) loses the zone in ``astimezone``.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else datetime.fromtimestamp(moment.timestamp(), UTC)


def _hour_filter(start: datetime | None, end: datetime | None) -> pc.Expression | None:
    stamp = pa.timestamp("us", tz="UTC")
    conditions = []
    if start is not None:
        conditions.append(pc.field("hour") >= pa.scalar(_utc(start), stamp))
    if end is not None:
        conditions.append(pc.field("hour") < pa.scalar(_utc(end), stamp))
    if not conditions:
        return None
    return conditions[0] if len(conditions) == 1 else conditions[0] & conditions[1]


# --- exports: reports/billing/<YYYY-MM-DD>/<HH>.csv and .html ---


@dataclass(frozen=True)
class HourExport:
    csv: Path
    html: Path
    status: str
    rows: int


def export_paths(reports_dir: Path, hour: datetime) -> tuple[Path, Path]:
    folder = reports_dir / "billing" / f"{hour:%Y-%m-%d}"
    return folder / f"{hour:%H}.csv", folder / f"{hour:%H}.html"


def reconciliation_path(reports_dir: Path, hour: datetime) -> Path:
    return reports_dir / "billing" / f"{hour:%Y-%m-%d}" / f"{hour:%H}.reconciliation.json"


def export_hour(settings: Settings, hour: datetime) -> HourExport:
    """Writes the hour's CSV and HTML report from the current bill; raises BillNotFound if it was never billed."""
    hour = _utc(hour)
    table = bill_table(settings)
    bill = table.to_pyarrow_dataset().to_table(filter=_hour_filter(hour, hour + HOUR)).to_pandas()
    if bill.empty:
        raise BillNotFound(f"no bill for {hour:%Y-%m-%d %H:00} UTC in gold/billing_hourly; bill the hour first")
    bill = bill.sort_values(["spend_micros", "campaign_id"], ascending=[False, True]).reset_index(drop=True)
    csv_path, html_path = export_paths(settings.reports_dir, hour)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text(bill_csv(bill))
    reconciliation = reconciliation_path(settings.reports_dir, hour)
    checked = json.loads(reconciliation.read_text()) if reconciliation.exists() else None
    html_path.write_text(bill_html(bill, hour, table_version=table.version(), reconciliation=checked))
    return HourExport(csv_path, html_path, hour_status(bill), len(bill))


def bill_csv(bill: pd.DataFrame) -> str:
    """The rows as CSV; times in ISO 8601 UTC, money as exact decimals."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(bill.columns)
    for row in bill.itertuples(index=False):
        writer.writerow(_cell(value) for value in row)
    return out.getvalue()


def _cell(value: object) -> str:
    if value is None or (not isinstance(value, str | Decimal) and pd.isna(value)):
        return ""
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    return str(value)


def _money(micros: int, currency: str) -> str:
    return f"{Decimal(int(micros)).scaleb(-6):,.6f} {currency}"


STATUS_NOTE = {
    BillStatus.FINAL: "Final: the event stream had caught up past the end of the hour; this bill will not change.",
    BillStatus.PROVISIONAL: (
        "Provisional: the event stream had not caught up past the end of the hour when this was billed; "
        "a later run replaces it with the final bill."
    ),
    BillStatus.EMPTY: "Final: no billable activity in this hour.",
    BillStatus.HELD_BACK: "Held back: every campaign of this hour failed the quality gate or the reconciliation.",
}


def bill_html(
    bill: pd.DataFrame, hour: datetime, *, table_version: int | None = None, reconciliation: dict | None = None
) -> str:
    """A self-contained page (inline CSS and SVG, nothing fetched): status, totals, top campaigns, all rows."""
    status = BillStatus(hour_status(bill))
    listed = bill[bill["campaign_id"].notna()]
    held = listed[listed["status"] == BillStatus.HELD_BACK.value]
    campaigns = listed[listed["status"] != BillStatus.HELD_BACK.value]
    currency = str(bill["currency"].iloc[0])
    title = f"AdStream bill {hour:%Y-%m-%d %H:00} to {hour + HOUR:%H:00} UTC"
    gross, credit = (_sum(campaigns, column) for column in ("gross_spend_micros", "ivt_credit_micros"))
    totals = {
        "Campaigns": f"{len(campaigns):,}",
        "Impressions": f"{int(campaigns['impressions'].sum()):,}",
        "Clicks": f"{int(campaigns['clicks'].sum()):,}",
        "Conversions": f"{int(campaigns['conversions'].sum()):,}",
        "Billable events": f"{int(campaigns['billable_events'].sum()):,}",
        "Gross spend (charged)": _money(gross, currency),
        "Invalid traffic credit": f"-{_money(credit, currency)}",
        "Spend": _money(int(campaigns["spend_micros"].sum()), currency),
    }
    watermark = bill["stream_watermark"].iloc[0]
    facts = [
        f"Billed at {_cell(bill['billed_at'].iloc[0])}",
        f"stream watermark {_cell(watermark) or 'unknown (no events yet)'}",
    ]
    if table_version is not None:
        facts.append(f"gold/billing_hourly version {table_version}")
    parts = [
        "<!doctype html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="status {status.value}"><strong>{status.value.upper()}</strong> — '
        f"{html.escape(STATUS_NOTE[status])}</p>",
        f"<p class=facts>{html.escape(' · '.join(facts))}</p>",
        _reconciliation_html(reconciliation),
        "<h2>Totals</h2>",
        _table(["", ""], [[name, value] for name, value in totals.items()], header=False),
    ]
    if not held.empty:
        parts += [
            f"<h2>Held back ({len(held)})</h2>",
            "<p>Not billed: these rows failed the quality gate or the reconciliation. A later run bills them "
            "once they pass.</p>",
            _table(
                ["Advertiser", "Campaign", "Gross spend", "Reason"],
                [
                    [_cell(row.advertiser_id), row.campaign_id, _money(_int(row.gross_spend_micros), currency),
                     _cell(row.held_reason)]
                    for row in held.itertuples()
                ],
            ),
        ]  # fmt: skip
    if campaigns.empty:
        parts.append("<p>No campaign had billable activity in this hour.</p>")
    else:
        by_advertiser = campaigns.groupby("advertiser_id", as_index=False)[["spend_micros", "billable_events"]].sum()
        by_advertiser = by_advertiser.sort_values("spend_micros", ascending=False)
        top = campaigns.head(TOP_CAMPAIGNS)
        parts += [
            "<h2>Spend by advertiser</h2>",
            _table(
                ["Advertiser", "Billable events", "Spend"],
                [
                    [row.advertiser_id, f"{row.billable_events:,}", _money(row.spend_micros, currency)]
                    for row in by_advertiser.itertuples()
                ],
            ),
            f"<h2>Top {len(top)} campaigns by spend</h2>",
            _spend_chart(top, currency),
            "<h2>All campaigns</h2>",
            _table(CAMPAIGN_HEADERS, [_campaign_cells(row, currency) for row in campaigns.itertuples()]),
        ]
    parts.append("</body></html>")
    return "\n".join(part for part in parts if part)


CAMPAIGN_HEADERS = [
    "Advertiser", "Campaign", "Model", "Impr.", "Clicks", "Conv.", "Billable", "IVT credit", "Spend", "CTR", "eCPM",
    "eff. CPC", "Budget left",
]  # fmt: skip


def _int(value: object) -> int:
    """A count or micros cell as int; a column a bill from before it existed lacks reads 0."""
    return 0 if value is None or pd.isna(value) else int(value)


def _sum(rows: pd.DataFrame, column: str) -> int:
    return int(rows[column].fillna(0).sum()) if column in rows else 0


def _campaign_cells(row: Any, currency: str) -> list[str]:
    budget_left = "" if pd.isna(row.budget_remaining_micros) else _money(row.budget_remaining_micros, currency)
    counts = (row.impressions, row.clicks, row.conversions, row.billable_events)
    return [
        row.advertiser_id, row.campaign_id, row.pricing_model, *(f"{count:,}" for count in counts),
        _money(_int(getattr(row, "ivt_credit_micros", 0)), currency), _money(row.spend_micros, currency),
        _cell(row.ctr), _cell(row.ecpm), _cell(row.effective_cpc), budget_left,
    ]  # fmt: skip


def _reconciliation_html(reconciliation: dict | None) -> str:
    if reconciliation is None:
        return "<p class=facts>Reconciliation: not run for this hour yet.</p>"
    sides = ", ".join(reconciliation["checked"])
    skipped = "; ".join(f"{side} skipped: {why}" for side, why in reconciliation["skipped"].items())
    verdict = "matches" if not reconciliation["mismatches"] else f"{len(reconciliation['mismatches'])} mismatches"
    text = f"Reconciliation ({sides}): {verdict}." + (f" {skipped}." if skipped else "")
    return f"<p class=facts>{html.escape(text)}</p>"


def _table(headers: list[str], rows: list[list[object]], *, header: bool = True) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _spend_chart(top: pd.DataFrame, currency: str) -> str:
    """Horizontal bars of spend per campaign, as inline SVG (scaled on integer micros)."""
    bar_height, label_width, bar_width = 22, 220, 420
    largest = max(int(top["spend_micros"].max()), 1)
    bars = []
    for i, row in enumerate(top.itertuples()):
        y = i * bar_height
        width = bar_width * int(row.spend_micros) / largest
        bars.append(
            f'<text x="{label_width - 6}" y="{y + 15}" text-anchor="end">{html.escape(str(row.campaign_id))}</text>'
            f'<rect x="{label_width}" y="{y + 3}" width="{width:.1f}" height="{bar_height - 6}" fill="#3b6ea5"/>'
            f'<text x="{label_width + width + 6:.1f}" y="{y + 15}">{html.escape(_money(row.spend_micros, currency))}'
            "</text>"
        )
    height = bar_height * len(top)
    width = label_width + bar_width + 200
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="Spend by campaign" '
        f'width="{width}" height="{height}" font-family="sans-serif" font-size="12">{"".join(bars)}</svg>'
    )


_CSS = (
    "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
    ".status{padding:.5em;border-radius:4px}.final,.empty{background:#e3f4e1}.provisional{background:#fff3cd}"
    ".held_back{background:#f8d7da}"
    ".facts{color:#555}"
)
