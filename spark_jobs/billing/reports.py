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

Finance's pages are rendered from the Jinja2 templates in ``templates/`` (autoescaped): the hour's bill
beside its CSV, and the finance report of several hours (what ``notebooks/billing_report.ipynb`` shows,
executed) for the hour's day, ``reports/billing/<day>/finance.html``, and for the latest LATEST_HOURS,
``reports/billing/finance.html``. Both stand alone: inline CSS, SVG bars and a base64 PNG chart.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

import duckdb
import jinja2
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


# --- exports: reports/billing/<YYYY-MM-DD>/<HH>.csv and .html, the day's finance.html, and finance.html ---


@dataclass(frozen=True)
class HourExport:
    csv: Path
    html: Path
    status: str
    rows: int
    finance: Path  # the report of the hour's day, beside its CSV


def export_paths(reports_dir: Path, hour: datetime) -> tuple[Path, Path]:
    folder = reports_dir / "billing" / f"{hour:%Y-%m-%d}"
    return folder / f"{hour:%H}.csv", folder / f"{hour:%H}.html"


def reconciliation_path(reports_dir: Path, hour: datetime) -> Path:
    return reports_dir / "billing" / f"{hour:%Y-%m-%d}" / f"{hour:%H}.reconciliation.json"


def finance_path(reports_dir: Path, day: datetime | None = None) -> Path:
    """The finance report of ``day`` (its hours billed so far), or with no day the latest one: the
    LATEST_HOURS up to the newest hour billed, at a path that does not change."""
    folder = reports_dir / "billing"
    return folder / "finance.html" if day is None else folder / f"{day:%Y-%m-%d}" / "finance.html"


LATEST_HOURS = 24
VERSIONS_SHOWN = 24


def export_hour(settings: Settings, hour: datetime) -> HourExport:
    """Writes the hour's CSV and HTML report from the current bill, and the finance reports of its day and the
    latest hours; raises BillNotFound if the hour was never billed."""
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
    day = hour.replace(hour=0)
    finance = export_finance(settings, day, day + timedelta(days=1), finance_path(settings.reports_dir, hour))
    newest = pc.max(table.to_pyarrow_dataset().to_table(columns=["hour"])["hour"]).as_py()
    export_finance(settings, newest + HOUR - LATEST_HOURS * HOUR, newest + HOUR, finance_path(settings.reports_dir))
    return HourExport(csv_path, html_path, hour_status(bill), len(bill), finance)


def export_finance(settings: Settings, start: datetime, end: datetime, path: Path) -> Path:
    """Writes the finance report of the hours in [start, end) to ``path``, whole or not at all; returns it."""
    bill = read_bill(settings, start=start, end=end)
    history = bill_history(settings).tail(VERSIONS_SHOWN)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = path.with_name(f".{path.name}.tmp")
    written.write_text(finance_html(bill, history, start=_utc(start), end=_utc(end)))
    return written.replace(path)


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

# Autoescaped: campaign, advertiser ids and held-back reasons come from outside and are shown as text.
_PAGES = jinja2.Environment(
    loader=jinja2.PackageLoader("spark_jobs.billing", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def bill_html(
    bill: pd.DataFrame, hour: datetime, *, table_version: int | None = None, reconciliation: dict | None = None
) -> str:
    """A self-contained page (inline CSS and SVG, nothing fetched): status, totals, top campaigns, all rows.

    Rendered from ``templates/bill.html.j2``; the figures are computed here, from integer micros.
    """
    status = BillStatus(hour_status(bill))
    listed = bill[bill["campaign_id"].notna()]
    held = listed[listed["status"] == BillStatus.HELD_BACK.value]
    campaigns = listed[listed["status"] != BillStatus.HELD_BACK.value]
    currency = str(bill["currency"].iloc[0])
    gross, credit = (_sum(campaigns, column) for column in ("gross_spend_micros", "ivt_credit_micros"))
    totals = [
        ("Campaigns", f"{len(campaigns):,}"),
        ("Impressions", f"{int(campaigns['impressions'].sum()):,}"),
        ("Clicks", f"{int(campaigns['clicks'].sum()):,}"),
        ("Conversions", f"{int(campaigns['conversions'].sum()):,}"),
        ("Billable events", f"{int(campaigns['billable_events'].sum()):,}"),
        ("Gross spend (charged)", _money(gross, currency)),
        ("Invalid traffic credit", f"-{_money(credit, currency)}"),
        ("Spend", _money(int(campaigns["spend_micros"].sum()), currency)),
    ]
    watermark = bill["stream_watermark"].iloc[0]
    facts = [
        f"Billed at {_cell(bill['billed_at'].iloc[0])}",
        f"stream watermark {_cell(watermark) or 'unknown (no events yet)'}",
    ]
    if table_version is not None:
        facts.append(f"gold/billing_hourly version {table_version}")
    by_advertiser = campaigns.groupby("advertiser_id", as_index=False)[["spend_micros", "billable_events"]].sum()
    by_advertiser = by_advertiser.sort_values("spend_micros", ascending=False)
    return _PAGES.get_template("bill.html.j2").render(
        title=f"AdStream bill {hour:%Y-%m-%d %H:00} to {hour + HOUR:%H:00} UTC",
        status=status.value,
        status_note=STATUS_NOTE[status],
        facts=facts,
        reconciliation=_reconciliation_text(reconciliation),
        totals=totals,
        held=[
            [_cell(row.advertiser_id), row.campaign_id, _money(_int(row.gross_spend_micros), currency),
             _cell(row.held_reason)]
            for row in held.itertuples()
        ],
        advertisers=[
            [row.advertiser_id, f"{row.billable_events:,}", _money(row.spend_micros, currency)]
            for row in by_advertiser.itertuples()
        ],
        top=spend_bars(campaigns.head(TOP_CAMPAIGNS), currency),
        campaign_headers=CAMPAIGN_HEADERS,
        campaigns=[_campaign_cells(row, currency) for row in campaigns.itertuples()],
    )  # fmt: skip


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


def _reconciliation_text(reconciliation: dict | None) -> str:
    if reconciliation is None:
        return "Reconciliation: not run for this hour yet."
    sides = ", ".join(reconciliation["checked"])
    skipped = "; ".join(f"{side} skipped: {why}" for side, why in reconciliation["skipped"].items())
    verdict = "matches" if not reconciliation["mismatches"] else f"{len(reconciliation['mismatches'])} mismatches"
    return f"Reconciliation ({sides}): {verdict}." + (f" {skipped}." if skipped else "")


@dataclass(frozen=True)
class Bar:
    y: int
    width: float
    label: str
    text: str


@dataclass(frozen=True)
class BarChart:
    bars: list[Bar]
    bar_height: int = 22
    label_width: int = 220
    bar_width: int = 420

    @property
    def height(self) -> int:
        return self.bar_height * len(self.bars)

    @property
    def width(self) -> int:
        return self.label_width + self.bar_width + 200


def spend_bars(top: pd.DataFrame, currency: str) -> BarChart:
    """Horizontal bars of spend per campaign (``templates/_macros.html.j2`` draws them), scaled on integer micros."""
    chart = BarChart([])
    largest = max(int(top["spend_micros"].max()), 1) if len(top) else 1
    for i, row in enumerate(top.itertuples()):
        chart.bars.append(
            Bar(i * chart.bar_height, chart.bar_width * int(row.spend_micros) / largest, str(row.campaign_id),
                _money(row.spend_micros, currency))
        )  # fmt: skip
    return chart


# --- the finance report: several hours of the bill, as notebooks/billing_report.ipynb shows them ---


def finance_html(bill: pd.DataFrame, history: pd.DataFrame, *, start: datetime, end: datetime) -> str:
    """A self-contained page of the bill rows of [start, end) (``read_bill``) and the table's ``history``:
    totals, per hour, a chart of spend per hour (PNG, inline), held-back rows, per advertiser, the top
    campaigns (SVG bars and their figures), the versions. Rendered from ``templates/finance.html.j2``."""
    listed = bill[bill["campaign_id"].notna()]
    campaigns = listed[listed["status"] != BillStatus.HELD_BACK.value]
    held = listed[listed["status"] == BillStatus.HELD_BACK.value]
    currency = ", ".join(sorted(bill["currency"].dropna().astype(str).unique())) or "USD"
    hours = spend_per_hour(bill)
    advertisers = (
        campaigns.groupby("advertiser_id", as_index=False)[["billable_events", "spend_micros"]]
        .sum()
        .sort_values(["spend_micros", "advertiser_id"], ascending=[False, True])
    )
    top = (
        campaigns.groupby(["advertiser_id", "campaign_id", "pricing_model"], as_index=False)[
            ["impressions", "clicks", "conversions", "billable_events", "spend_micros"]
        ]
        .sum()
        .sort_values(["spend_micros", "campaign_id"], ascending=[False, True])
        .head(TOP_CAMPAIGNS)
    )
    statuses = hours["status"].value_counts()
    return _PAGES.get_template("finance.html.j2").render(
        title=f"AdStream billing {start:%Y-%m-%d %H:00} to {end:%Y-%m-%d %H:00} UTC",
        facts=[
            f"{len(hours)} hours billed" + "".join(f", {count} {status}" for status, count in statuses.items()),
            f"gold/billing_hourly version {int(history['version'].max())}" if len(history) else "no version yet",
        ],
        totals=[
            ("Campaigns", f"{campaigns['campaign_id'].nunique():,}"),
            ("Impressions", f"{int(campaigns['impressions'].sum()):,}"),
            ("Clicks", f"{int(campaigns['clicks'].sum()):,}"),
            ("Billable events", f"{int(campaigns['billable_events'].sum()):,}"),
            ("Spend", _money(_sum(campaigns, "spend_micros"), currency)),
        ],
        hours=[
            [f"{row.hour:%Y-%m-%d %H:00}", row.status, f"{row.campaigns:,}", f"{row.impressions:,}",
             f"{row.clicks:,}", f"{row.billable_events:,}", f"{row.held_back:,}", _money(row.spend_micros, currency)]
            for row in hours.itertuples()
        ],
        spend_per_hour_png=spend_per_hour_png(hours, currency) if len(hours) else "",
        held=[
            [f"{row.hour:%Y-%m-%d %H:00}", _cell(row.advertiser_id), row.campaign_id,
             _money(_int(row.gross_spend_micros), currency), _cell(row.held_reason)]
            for row in held.itertuples()
        ],
        advertisers=[
            [row.advertiser_id, f"{row.billable_events:,}", _money(row.spend_micros, currency)]
            for row in advertisers.itertuples()
        ],
        top=spend_bars(top, currency),
        top_campaigns=[
            [row.advertiser_id, row.campaign_id, row.pricing_model, f"{row.impressions:,}", f"{row.clicks:,}",
             f"{row.conversions:,}", f"{row.billable_events:,}", _money(row.spend_micros, currency)]
            for row in top.itertuples()
        ],
        versions=[
            [int(row.version), f"{row.timestamp:%Y-%m-%d %H:%M:%S}", row.operation]
            for row in history.sort_values("version", ascending=False).itertuples()
        ],
    )  # fmt: skip


def spend_per_hour(bill: pd.DataFrame) -> pd.DataFrame:
    """One row per billed hour: its status, campaigns, counts and spend (integer micros) of the rows billed,
    and how many campaigns it holds back."""
    listed = bill[bill["campaign_id"].notna()]
    billed = listed[listed["status"] != BillStatus.HELD_BACK.value]
    columns = ["impressions", "clicks", "billable_events", "spend_micros"]
    hours = pd.DataFrame({"hour": sorted(bill["hour"].unique())})
    status = bill.groupby("hour")[["status"]].agg(lambda statuses: hour_status(pd.DataFrame({"status": statuses})))
    sums = billed.groupby("hour")[columns].sum()
    counts = billed.groupby("hour")["campaign_id"].nunique().rename("campaigns")
    held = (listed["status"] == BillStatus.HELD_BACK.value).groupby(listed["hour"]).sum().rename("held_back")
    hours = hours.join(status, on="hour").join(counts, on="hour").join(sums, on="hour").join(held, on="hour")
    return hours.fillna({name: 0 for name in [*columns, "campaigns", "held_back"]}).astype(
        {name: "int64" for name in [*columns, "campaigns", "held_back"]}
    )


def spend_per_hour_png(hours: pd.DataFrame, currency: str) -> str:
    """The notebook's chart, spend per hour with provisional hours hatched, as base64 PNG (floats: a picture)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state in a worker

    figure = Figure(figsize=(9, 3.5))
    axes = figure.subplots()
    labels = [f"{hour:%m-%d %H:00}" for hour in hours["hour"]]
    bars = axes.bar(labels, [micros / 1e6 for micros in hours["spend_micros"]], color="#3b6ea5")
    for bar, status in zip(bars, hours["status"], strict=True):
        bar.set_hatch("//" if status == BillStatus.PROVISIONAL.value else "")
    axes.set_ylabel(f"spend ({currency})")
    axes.set_xlabel("hour (UTC)")
    axes.tick_params(axis="x", rotation=45)
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=80, metadata={"Software": None})
    return base64.b64encode(out.getvalue()).decode("ascii")
