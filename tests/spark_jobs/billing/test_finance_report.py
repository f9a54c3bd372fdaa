"""The finance pages from real bills (the billing scenario's Spark/Delta run): the hour's bill and the multi-hour
report, rendered from their Jinja2 templates, carry the bill's exact figures, escape what they show, and stand alone."""

from __future__ import annotations

import base64
import re
from decimal import Decimal
from html.parser import HTMLParser

import pandas as pd
import pytest

from spark_jobs.billing import reports as finance
from tests.spark_jobs.billing.data import EXPECTED_HOUR_10, H

pytestmark = pytest.mark.slow
SCRIPT = "<script>alert('bill')</script>"


class Tables(HTMLParser):
    """Each <table> of a page as rows of cell texts, under the <h2> before it; and every <img> src."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self._heading, self._in, self._cell = "", None, None
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "h2":
            self._in, self._heading = "h2", ""
        elif tag == "table":
            self.tables[self._heading] = []
        elif tag == "tr":
            self.tables[self._heading].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self.images.append(dict(attrs)["src"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in = None
        elif tag in ("td", "th"):
            self.tables[self._heading][-1].append(self._cell or "")
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._in == "h2":
            self._heading += data
        elif self._cell is not None:
            self._cell += data


def amount(text: str) -> Decimal:
    """'5,000.000000 USD' -> Decimal('5000.000000')."""
    number, currency = text.split(" ")
    assert currency == "USD"
    return Decimal(number.replace(",", ""))


def as_table(rows: list[list[str]]) -> dict[str, list[str]]:
    return {row[1] if len(row) > 2 else row[0]: row for row in rows}


@pytest.fixture(scope="module")
def bill(scenario) -> pd.DataFrame:
    """The current bill, read back from gold/billing_hourly: the figures the pages must show."""
    return finance.read_bill(scenario.settings)


def test_the_hours_page_shows_the_bills_decimal_spend_per_campaign(scenario, bill):
    page = Tables(scenario.exports[H].html.read_text())
    hour = bill[(bill["hour"] == pd.Timestamp(H)) & bill["campaign_id"].notna()]
    campaigns = {row[1]: row for row in page.tables["All campaigns"][1:]}
    assert set(campaigns) == set(EXPECTED_HOUR_10) == set(hour["campaign_id"])
    for row in hour.itertuples():
        assert amount(campaigns[row.campaign_id][8]) == row.spend == Decimal(row.spend_micros).scaleb(-6)
        assert int(campaigns[row.campaign_id][3].replace(",", "")) == row.impressions
    totals = dict(page.tables["Totals"])
    assert amount(totals["Spend"]) == hour["spend"].sum() == Decimal(5_933_705).scaleb(-6)


def test_the_finance_report_is_written_beside_the_csv_with_every_hour_and_advertiser(scenario, bill):
    export = scenario.exports[H]
    assert (
        export.finance == export.csv.parent / "finance.html" == finance.finance_path(scenario.settings.reports_dir, H)
    )
    latest = finance.finance_path(scenario.settings.reports_dir)
    assert latest == scenario.settings.reports_dir / "billing" / "finance.html"
    for path in (export.finance, latest):
        text = path.read_text()
        page = Tables(text)
        hours = {row[0]: row for row in page.tables["Per hour"][1:]}
        assert set(hours) == {"2026-11-24 08:00", "2026-11-24 10:00"}  # the empty hour and the billed one
        assert hours["2026-11-24 08:00"][1] == "empty" and hours["2026-11-24 10:00"][1] == "final"
        billed = bill[bill["campaign_id"].notna()]
        assert amount(hours["2026-11-24 10:00"][7]) == billed["spend"].sum()
        assert amount(hours["2026-11-24 08:00"][7]) == Decimal(0)
        advertisers = {row[0]: amount(row[2]) for row in page.tables["Per advertiser"][1:]}
        expected = billed.groupby("advertiser_id")["spend"].sum().to_dict()
        assert advertisers == expected == {"adv-north": Decimal("0.933705"), "adv-south": Decimal("5.000000")}
        top = [
            (row[1], int(row[6].replace(",", "")), amount(row[7]))
            for row in page.tables["Top 3 campaigns by spend"][1:]
        ]
        assert top == [
            (row.campaign_id, row.billable_events, row.spend)
            for row in billed.sort_values("spend_micros", ascending=False).itertuples()
        ]
        versions = [int(row[0]) for row in page.tables["Versions of the bill"][1:]]
        history = finance.bill_history(scenario.settings)
        assert versions == sorted(history["version"], reverse=True)
        assert not re.search(r"(src|href)=\"?https?:", text)  # nothing is fetched: the file stands alone


def test_the_charts_are_inline_a_png_and_svg_bars(scenario):
    for path in (scenario.exports[H].finance, scenario.exports[H].html):
        text = path.read_text()
        svg = text[text.index("<svg") : text.index("</svg>")]
        assert all(campaign in svg for campaign in EXPECTED_HOUR_10)
        assert "5.000000 USD" in svg
    (image,) = Tables(scenario.exports[H].finance.read_text()).images
    prefix = "data:image/png;base64,"
    assert image.startswith(prefix)
    assert base64.b64decode(image[len(prefix) :]).startswith(b"\x89PNG\r\n\x1a\n")


def test_a_value_with_markup_is_shown_as_text_never_run(scenario, bill):
    hour = bill[bill["hour"] == pd.Timestamp(H)].copy()
    hour["advertiser_id"] = SCRIPT
    hour.loc[hour.index[0], ["status", "held_reason"]] = ["held_back", SCRIPT]
    history = finance.bill_history(scenario.settings)
    for page in (
        finance.bill_html(hour, H, reconciliation=None),
        finance.finance_html(hour, history, start=H, end=H + finance.HOUR),
    ):
        assert "<script" not in page
        assert "&lt;script&gt;alert(&#39;bill&#39;)&lt;/script&gt;" in page
        assert SCRIPT in Tables(page).tables[next(name for name in Tables(page).tables if name.startswith("Held"))][1]
