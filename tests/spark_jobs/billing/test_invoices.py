"""An exchange's invoice: the file's rules, each line's verdict, worked out by hand (no lake, no Spark)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from spark_jobs.billing import invoices
from spark_jobs.billing.invoices import InvoiceError, Verdict
from tests.spark_jobs.billing.data import H, at

HEADER = "period_start,period_end,impressions,amount,currency\n"
TOLERANCE = Decimal("0.02")


def test_an_invoice_line_is_read_in_utc_and_exact_micros():
    lines, rejected = invoices.parse_invoice(
        HEADER
        + "2026-11-24T10:00Z,2026-11-24T12:00Z,1500,3.25,USD\n"
        + "2026-11-24T13:00+01:00,2026-11-24T13:00,7,0.000001,usd\n"  # 12:00 UTC to 13:00 UTC
        + "\n"  # a blank line is no line
        + "2026-11-24T13:00,2026-11-24T14:00,0,0,\n"  # no currency: USD
    )
    assert rejected == []
    assert [(line.line, line.period_start, line.period_end, line.impressions, line.amount_micros, line.places)
            for line in lines] == [
        (2, at(10, 0), at(12, 0), 1500, 3_250_000, 2),
        (3, at(12, 0), at(13, 0), 7, 1, 6),
        (5, at(13, 0), at(14, 0), 0, 0, 0),
    ]  # fmt: skip
    assert lines[0].hours() == [at(10, 0), at(11, 0)]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("2026-11-24T10:30Z,2026-11-24T11:00Z,1,1.00,USD", "period_start '2026-11-24T10:30Z' is not on a whole UTC"),
        ("yesterday,2026-11-24T11:00Z,1,1.00,USD", "period_start 'yesterday' is not an ISO 8601 time"),
        ("2026-11-24T11:00Z,2026-11-24T11:00Z,1,1.00,USD", "period_end 2026-11-24T11:00Z is not after period_start"),
        ("2026-11-24T10:00Z,2026-11-24T11:00Z,1,1.00,EUR", "currency 'EUR': bills and win prices are in USD"),
        ("2026-11-24T10:00Z,2026-11-24T11:00Z,-3,1.00,USD", "impressions -3 is negative"),
        ("2026-11-24T10:00Z,2026-11-24T11:00Z,2.5,1.00,USD", "impressions '2.5' is not a whole number"),
        ("2026-11-24T10:00Z,2026-11-24T11:00Z,1,1.0.0,USD", "amount '1.0.0' is not a decimal number"),
        ("2026-11-24T10:00Z,2026-11-24T11:00Z,1,-1.00,USD", "amount '-1.00' must be a number from 0 to"),
        ("2026-11-24T10:00Z,2026-11-24T11:00Z,1,NaN,USD", "amount 'NaN' must be a number from 0 to"),
        ("2026-11-24T10:00Z,2026-11-24T11:00Z,1,1E+999999,USD", "must be a number from 0 to 1,000,000,000,000 USD"),
        ("0001-01-01T00:00Z,9999-01-01T00:00Z,1,1.00,USD", "its period is longer than 92 days"),
        ("2026-11-24T10:00Z,2026-11-24T11:00Z,1,0.0000001,USD", "has more than 6 decimal places"),
        ("2026-11-24T10:00Z,2026-11-24T11:00Z,1", "3 fields where the header has 5"),
    ],
)
def test_a_line_breaking_a_rule_is_rejected_with_its_number_and_the_others_are_kept(row, reason):
    good = "2026-11-24T20:00Z,2026-11-24T21:00Z,1,1.00,USD"
    lines, rejected = invoices.parse_invoice(
        f"{HEADER}{good}\n{row}\n{good.replace('T20', 'T19').replace('T21', 'T20')}\n"
    )
    assert [line.line for line in lines] == [2, 4]
    assert [(line.line, line.text) for line in rejected] == [(3, row)]
    assert reason in rejected[0].reason


def test_a_spreadsheets_byte_order_mark_is_not_part_of_the_header():
    lines, rejected = invoices.parse_invoice("\ufeff" + HEADER + "2026-11-24T10:00Z,2026-11-24T11:00Z,1,1.00,USD\n")
    assert (len(lines), rejected) == (1, [])


def test_a_line_overlapping_an_earlier_one_is_rejected_so_no_hour_is_paid_twice():
    lines, rejected = invoices.parse_invoice(
        HEADER + "2026-11-24T10:00Z,2026-11-24T13:00Z,1,1,USD\n2026-11-24T12:00Z,2026-11-24T14:00Z,1,1,USD\n"
        "2026-11-24T13:00Z,2026-11-24T14:00Z,1,1,USD\n"
    )
    assert [line.line for line in lines] == [2, 4]
    assert [(line.line, line.reason) for line in rejected] == [(3, "its period overlaps line 2's")]


def test_overlaps_are_found_whatever_the_order_of_the_lines():
    hours = [(H + timedelta(hours=h)).isoformat() for h in range(30)]
    rows = [f"{hours[h]},{hours[h + 1]},1,1,USD" for h in range(28, 0, -2)]  # every other hour, last first
    rows += [f"{hours[3]},{hours[5]},1,1,USD", f"{hours[1]},{hours[2]},1,1,USD", f"{hours[0]},{hours[29]},1,1,USD"]
    lines, rejected = invoices.parse_invoice(HEADER + "\n".join(rows) + "\n")
    assert len(lines) == 15 and lines[-1].period_start == H + timedelta(hours=1)  # 01:00-02:00 was free
    # Hours 3-5 overlap hour 4 (line 14); hours 0-29 overlap every kept line, and the one found is hour 28's.
    assert [(line.line, line.reason) for line in rejected] == [
        (16, "its period overlaps line 14's"), (18, "its period overlaps line 2's"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "the invoice is empty"), ("start,end,impressions,amount\n", "the invoice's header lacks period_start")],
)
def test_a_file_without_the_header_is_refused_whole(text, message):
    with pytest.raises(InvoiceError, match=message):
        invoices.parse_invoice(text)


def line(hours: int, impressions: int, amount: str, start=H) -> invoices.InvoiceLine:
    lines, rejected = invoices.parse_invoice(
        f"{HEADER}{start.isoformat()},{(start + timedelta(hours=hours)).isoformat()},{impressions},{amount},USD\n"
    )
    assert rejected == []
    return lines[0]


# The exchange's hours: 10:00 three impressions at $2.000001, $1.5 and $0.75 CPM; 11:00 one at $4.124499 CPM.
COSTS = {H: (3, 4_250_001), H + timedelta(hours=1): (1, 4_124_499)}
CLOSED = {H: "final", H + timedelta(hours=1): "final", H + timedelta(hours=2): "empty"}


@pytest.mark.parametrize(
    ("invoice", "ours", "verdict"),
    [
        # 10:00-12:00: 8,374,500 per thousand -> 8,374.5 -> 8,375 micros, half up once (per hour: 4,250 + 4,124).
        (line(2, 4, "0.008375"), 8_375, Verdict.AGREES),
        (line(2, 4, "0.01"), 8_375, Verdict.AGREES),  # an invoice in cents is compared in cents
        (line(3, 4, "0.008375"), 8_375, Verdict.AGREES),  # an empty hour billed final costs nothing
        (line(2, 4, "0.008500"), 8_375, Verdict.WITHIN_TOLERANCE),  # 125 micros: 1.49 %
        (line(2, 4, "0.008600"), 8_375, Verdict.DISPUTED),  # 225 micros: 2.69 %
        (line(2, 5, "0.008375"), 8_375, Verdict.DISPUTED),  # one impression of four more: 25 %
        (line(1, 3, "0.004250"), 4_250, Verdict.AGREES),  # 4,250.001 -> 4,250
        (line(1, 0, "0.000000", start=H - timedelta(hours=1)), 0, Verdict.OPEN),  # an hour never billed
    ],
)
def test_each_line_is_judged_against_the_sum_of_its_hours_rounded_once(invoice, ours, verdict):
    [result] = invoices.reconcile([invoice], COSTS, CLOSED, tolerance=TOLERANCE)
    assert (result.our_micros, result.verdict) == (ours, verdict)
    assert result.difference_micros == invoice.amount_micros - ours


def test_a_line_with_an_hour_not_final_is_open_and_says_which():
    statuses = {H: "final", H + timedelta(hours=1): "provisional"}
    [result] = invoices.reconcile([line(3, 4, "0.008375")], COSTS, statuses, tolerance=TOLERANCE)
    assert result.verdict == Verdict.OPEN
    assert result.open_hours == ("2026-11-24T11:00Z provisional", "2026-11-24T12:00Z not billed")


def test_an_invoice_for_hours_we_have_nothing_of_is_disputed_whole():
    [result] = invoices.reconcile([line(1, 2, "1.00", start=H + timedelta(hours=2))], COSTS, CLOSED,
                                  tolerance=TOLERANCE)  # fmt: skip
    assert (result.our_micros, result.our_impressions, result.discrepancy) == (0, 0, None)
    assert (result.verdict, result.difference_micros) == (Verdict.DISPUTED, 1_000_000)
