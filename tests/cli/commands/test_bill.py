"""`adstream bill`: a bad hour or range is a usage error, before any Spark session starts."""

import pytest

from tests.cli.conftest import invoke
from tests.conftest import make_settings


@pytest.mark.parametrize(
    "argv",
    [[], ["--hour", "2026-11-24T10:30"], ["--from", "2026-11-24T10:00"], ["--hour", "2026-11-24T10:00", "--step", "x"]],
)
def test_bill_refuses_a_bad_hour_or_range(argv, tmp_path):
    result = invoke(make_settings(tmp_path), ["bill", *argv])
    assert result.exit_code == 2
    assert "Usage: adstream bill" in result.stderr


@pytest.mark.parametrize(
    ("exchange", "content", "message"),
    [
        ("exch-a", b"period_start,period_end,impressions,amount\n\xff\xfe", "is not UTF-8 text (byte 43)"),
        ("exch-a", b"from,to,impressions,amount\n", "the invoice's header lacks period_start, period_end"),
        ("exch a/..", b"period_start,period_end,impressions,amount\n", "'exch a/..' is not a caller id"),
    ],
)
def test_invoice_refuses_a_file_it_cannot_read_or_an_exchange_that_is_no_caller(exchange, content, message, tmp_path):
    invoice = tmp_path / "invoice.csv"
    invoice.write_bytes(content)
    result = invoke(make_settings(tmp_path), ["invoice", exchange, str(invoice)])
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert not (tmp_path / "reports").exists()  # nothing judged, no report
