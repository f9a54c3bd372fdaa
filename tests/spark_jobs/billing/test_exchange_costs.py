"""gold/exchange_costs_hourly as the billing run writes it, and `adstream invoice` judging exchanges' invoices on it."""

from __future__ import annotations

import json

import pytest

from adstream.contracts import Table
from spark_jobs.billing import job as billing
from tests.cli.conftest import invoke
from tests.spark_jobs.billing.data import LATE, NOW, H, at, build_store, store_settings, write_silver

pytestmark = pytest.mark.slow


def win(event_id: str, auction_id: str, moment, exchange: str, price_cpm_micros: int) -> tuple:
    fields = {"publisher_id": exchange, "charge_status": "not_billable", "exchange_price_cpm_micros": price_cpm_micros}
    return event_id, auction_id, "win", moment, fields


def shown(event_id: str, auction_id: str, moment, exchange: str) -> tuple:
    return event_id, auction_id, "impression", moment, {"publisher_id": exchange}


HOUR_10 = [
    win("w1", "a1", at(10, 4, 30), "exch-a", 2_000_000), shown("i1", "a1", at(10, 5), "exch-a"),
    win("w2", "a2", at(10, 9), "exch-a", 1_000_001), shown("i2", "a2", at(10, 10), "exch-a"),
    win("w3", "a3", at(10, 19), "exch-b", 3_500_000),
    win("w4", "a3", at(10, 19, 1), "exch-b", 3_000_000),  # fired twice: the lower price
    shown("i3", "a3", at(10, 20), "exch-b"),
    win("w5", "b2", at(10, 29), "exch-b", 500_000),  # won, never shown: the exchange bills nothing
    shown("i4", "b3", at(10, 59), None),  # our own JSON route: no exchange
]  # fmt: skip


@pytest.fixture(scope="module")
def billed(spark, tmp_path_factory):
    settings = store_settings(tmp_path_factory.mktemp("exchange-costs"))
    write_silver(settings, HOUR_10, auctions=["a1", "a2", "a3", "b2", "b3"])
    build_store(settings, HOUR_10)
    billing.bill_hour(spark, settings, H, now=NOW)
    provisional = costs(spark, settings)
    write_silver(settings, LATE, auctions=["b6"])  # the watermark passes the hour: it bills final
    billing.bill_hour(spark, settings, H, now=NOW)
    return settings, provisional


def costs(spark, settings) -> dict:
    table = spark.read.format("delta").load(settings.lake_path(Table.GOLD_EXCHANGE_COSTS_HOURLY))
    return {
        (row.hour, row.exchange_id): (row.exchange_impressions, row.media_cost_cpm_micros)
        for row in table.collect()
    }  # fmt: skip


def test_each_exchange_is_charged_its_prices_of_the_impressions_it_priced(spark, billed):
    settings, provisional = billed
    # exch-a: a1 at $2 and a2 at $1.000001 CPM; exch-b: a3 at the lower of its two notices. A re-billed hour
    # replaces its rows: one row per exchange, not two.
    expected = {(H.replace(tzinfo=None), "exch-a"): (2, 3_000_001), (H.replace(tzinfo=None), "exch-b"): (1, 3_000_000)}
    assert provisional == expected
    assert costs(spark, settings) == expected


def write_invoice(tmp_path, name: str, *rows: str):
    path = tmp_path / f"{name}.csv"
    path.write_text("period_start,period_end,impressions,amount,currency\n" + "".join(f"{row}\n" for row in rows))
    return path


def test_an_invoice_that_agrees_passes_and_one_billing_more_is_disputed_with_its_report(billed, tmp_path):
    settings, _ = billed
    # exch-a's 3,000,001 per thousand is 3,000 micros: 0.003000 USD, or 0.00 in cents.
    agreed = write_invoice(tmp_path, "a-2026-11", "2026-11-24T10:00Z,2026-11-24T11:00Z,2,0.003000,USD")
    result = invoke(settings, ["invoice", "exch-a", str(agreed)])
    assert result.exit_code == 0, result.output
    assert "line 2 2026-11-24T10:00Z..2026-11-24T11:00Z: agrees" in result.stdout

    # exch-b bills its unshown win of b2 too ($0.5 CPM): 0.0035 against our 0.003000 USD, 16.7 %.
    disputed = write_invoice(
        tmp_path, "b-2026-11", "2026-11-24T10:00Z,2026-11-24T11:00Z,2,0.003500,USD", "2026-11-24T10:30Z,x,1,1,USD"
    )
    result = invoke(settings, ["invoice", "exch-b", str(disputed)])
    assert result.exit_code == 1, result.output
    assert "disputed; invoiced 0.003500 USD for 2 impressions, ours 0.003000 USD for 1" in result.stdout
    assert "line 3 rejected: period_start '2026-11-24T10:30Z' is not on a whole UTC hour" in result.stdout
    report = json.loads((settings.reports_dir / "billing" / "invoices" / "exch-b" / "b-2026-11.json").read_text())
    assert [(line["verdict"], line["difference_micros"]) for line in report["lines"]] == [("disputed", 500)]
    assert report["totals"] == {"invoiced_micros": 3_500, "our_micros": 3_000, "disputed_micros": 500}
    assert [line["line"] for line in report["rejected"]] == [3]

    # An hour never billed: the line waits.
    pending = write_invoice(tmp_path, "a-later", "2026-11-24T11:00Z,2026-11-24T12:00Z,0,0,USD")
    result = invoke(settings, ["invoice", "exch-a", str(pending)])
    assert result.exit_code == 0 and "open;" in result.stdout and "2026-11-24T11:00Z not billed" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [(["../etc", "{invoice}"], "is not a caller id"), (["exch-a", "{missing}"], "does not exist")],
)
def test_a_bad_exchange_or_file_is_a_usage_error(billed, tmp_path, args, message):
    settings, _ = billed
    invoice = write_invoice(tmp_path, "x", "2026-11-24T10:00Z,2026-11-24T11:00Z,2,0.003000,USD")
    argv = [arg.format(invoice=invoice, missing=tmp_path / "missing.csv") for arg in args]
    result = invoke(settings, ["invoice", *argv])
    assert result.exit_code == 2 and message in result.stderr, result.output
