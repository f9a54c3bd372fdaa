"""An exchange's invoice against what its win notices priced: ``adstream invoice EXCHANGE FILE``.

An exchange bills us its clearing price (``${AUCTION_PRICE}``, per thousand) for each impression of an auction
we won there. Billing keeps our side per exchange and hour in gold/exchange_costs_hourly: the impressions,
first shown in the hour, that a win notice of the exchange priced, and the sum of those prices per thousand,
exact. An invoice line covers whole UTC hours; our amount for it is the thousandth of its prices' sum,
rounded half up once, as the invoice rounds its line.

The invoice is a CSV file with a header: ``period_start,period_end,impressions,amount[,currency]``. Times are
ISO 8601 (UTC when no offset is given) on whole hours, ``period_end`` exclusive; ``amount`` is a decimal in
the currency (USD, the only one campaigns may have). A line that breaks a rule is rejected with its line
number and the reason, and the file's other lines are still reconciled: nothing is dropped unseen.

Each line's verdict:
- ``open``: an hour of its period has no final bill yet (not billed, or provisional: the stream may still
  bring its events). Judge it again once those hours are final.
- ``agrees``: the same impressions, and our amount, rounded to the invoice's own decimal places, is its amount.
- ``within_tolerance``: the amount and the impressions each differ by at most EXCHANGE_INVOICE_TOLERANCE
  of ours (the counting discrepancy exchanges and buyers settle on).
- ``disputed``: beyond it; ``difference`` is what the exchange invoiced above (or below) our account.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc
from deltalake import DeltaTable

from adstream.contracts import Table
from adstream.settings import Settings
from spark_jobs.billing import reports
from spark_jobs.billing.reports import HOUR, BillStatus

MICROS = 1_000_000
CURRENCY = "USD"
REQUIRED = ("period_start", "period_end", "impressions", "amount")
OPTIONAL = ("currency",)
MAX_SHOWN = 200  # characters of a rejected line kept in the report
MAX_PERIOD = timedelta(days=92)  # a quarter: the longest line an invoice may have
MAX_AMOUNT = Decimal(10) ** 12  # USD; above is a unit mistake, or a file out to exhaust us
CLOSED = {BillStatus.FINAL.value, BillStatus.EMPTY.value, BillStatus.HELD_BACK.value}


EXCHANGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a caller id, as the auction log keeps it


class InvoiceError(ValueError):
    """The file cannot be read as an invoice at all (no header, a column missing), or names no valid exchange."""


class Verdict(StrEnum):
    OPEN = "open"
    AGREES = "agrees"
    WITHIN_TOLERANCE = "within_tolerance"
    DISPUTED = "disputed"


@dataclass(frozen=True)
class InvoiceLine:
    line: int  # in the file, the header being line 1
    period_start: datetime
    period_end: datetime
    impressions: int
    amount_micros: int
    places: int  # decimal places the invoice states its amount with

    def hours(self) -> list[datetime]:
        count = int((self.period_end - self.period_start) / HOUR)
        return [self.period_start + i * HOUR for i in range(count)]


@dataclass(frozen=True)
class RejectedLine:
    line: int
    text: str
    reason: str


@dataclass(frozen=True)
class LineResult:
    line: int
    period_start: datetime
    period_end: datetime
    invoiced_impressions: int
    our_impressions: int
    invoiced_micros: int
    our_micros: int
    difference_micros: int  # invoiced - ours
    discrepancy: Decimal | None  # |difference| / ours; None when we have nothing
    verdict: Verdict
    open_hours: tuple[str, ...]  # hours not final yet, and why


# --- reading the file ---


def parse_invoice(text: str) -> tuple[list[InvoiceLine], list[RejectedLine]]:
    """The invoice's lines, and those rejected with a reason. Raises InvoiceError when no line can be read."""
    try:
        rows = list(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))  # a spreadsheet's byte order mark
    except csv.Error as exc:
        raise InvoiceError(f"the invoice is not CSV: {exc}") from None
    if not rows:
        raise InvoiceError(f"the invoice is empty: its first line must be the header {','.join(REQUIRED)}")
    header = [name.strip().lower() for name in rows[0]]
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        raise InvoiceError(
            f"the invoice's header lacks {', '.join(missing)}: it must name {','.join(REQUIRED)} (and optionally "
            f"{','.join(OPTIONAL)}); it has {','.join(header) or 'nothing'}"
        )
    lines: list[InvoiceLine] = []
    rejected: list[RejectedLine] = []
    periods: list[tuple[datetime, datetime, int]] = []  # the kept lines' periods, sorted: they never overlap
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        text_of_row = ",".join(row)[:MAX_SHOWN]
        if len(row) != len(header):
            rejected.append(RejectedLine(number, text_of_row, f"{len(row)} fields where the header has {len(header)}"))
            continue
        try:
            line = _line(number, dict(zip(header, (cell.strip() for cell in row), strict=True)))
        except ValueError as exc:
            rejected.append(RejectedLine(number, text_of_row, str(exc)))
            continue
        overlap = _overlapped(periods, line)
        if overlap is not None:
            rejected.append(RejectedLine(number, text_of_row, f"its period overlaps line {overlap}'s"))
            continue
        bisect.insort(periods, (line.period_start, line.period_end, line.line))
        lines.append(line)
    return lines, rejected


def _line(number: int, fields: Mapping[str, str]) -> InvoiceLine:
    start, end = _hour(fields["period_start"], "period_start"), _hour(fields["period_end"], "period_end")
    if end <= start:
        raise ValueError(f"period_end {end:%Y-%m-%dT%H:%MZ} is not after period_start {start:%Y-%m-%dT%H:%MZ}")
    if end - start > MAX_PERIOD:
        raise ValueError(f"its period is longer than {MAX_PERIOD.days} days: split it into months")
    currency = fields.get("currency") or CURRENCY
    if currency.upper() != CURRENCY:
        raise ValueError(f"currency {currency!r}: bills and win prices are in {CURRENCY}")
    try:
        impressions = int(fields["impressions"])
    except ValueError:
        raise ValueError(f"impressions {fields['impressions']!r} is not a whole number") from None
    if impressions < 0:
        raise ValueError(f"impressions {impressions} is negative")
    try:
        amount = Decimal(fields["amount"])
    except InvalidOperation:
        raise ValueError(f"amount {fields['amount']!r} is not a decimal number such as 1234.56") from None
    if not amount.is_finite() or not 0 <= amount <= MAX_AMOUNT:
        raise ValueError(f"amount {fields['amount']!r} must be a number from 0 to {MAX_AMOUNT:,f} USD")
    places = max(0, -int(amount.as_tuple().exponent))
    if places > 6:
        raise ValueError(f"amount {fields['amount']!r} has more than 6 decimal places (a micro of a dollar)")
    return InvoiceLine(number, start, end, impressions, int(amount * MICROS), places)


def _hour(text: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not an ISO 8601 time such as 2026-12-01T00:00Z") from None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    if moment != moment.replace(minute=0, second=0, microsecond=0):
        raise ValueError(f"{name} {text!r} is not on a whole UTC hour: bills are hourly")
    return moment


def _overlapped(periods: list[tuple[datetime, datetime, int]], line: InvoiceLine) -> int | None:
    """The number of a kept line whose period overlaps ``line``'s, if any: as kept periods never overlap, only
    the one starting last before its end can (a bisection, so a long invoice is read in n log n)."""
    index = bisect.bisect_left(periods, (line.period_end,)) - 1
    if index >= 0 and periods[index][1] > line.period_start:
        return periods[index][2]
    return None


# --- the reconciliation ---


def thousandth(cpm_micros: int) -> int:
    """A sum of prices per thousand as micros: a thousandth, rounded half up once (exact, in integers)."""
    return (cpm_micros * 2 + 1000) // 2000


def reconcile(
    lines: Iterable[InvoiceLine],
    costs: Mapping[datetime, tuple[int, int]],
    statuses: Mapping[datetime, str],
    *,
    tolerance: Decimal,
) -> list[LineResult]:
    """Each line against our account: ``costs`` is the exchange's (impressions, sum of prices per thousand) per
    hour, ``statuses`` the bill status of each billed hour (an hour missing from it was never billed)."""
    results = []
    for line in lines:
        hours = line.hours()
        open_hours = tuple(
            f"{hour:%Y-%m-%dT%H:00Z} {statuses.get(hour, 'not billed')}"
            for hour in hours
            if statuses.get(hour) not in CLOSED
        )
        impressions = sum(costs.get(hour, (0, 0))[0] for hour in hours)
        ours = thousandth(sum(costs.get(hour, (0, 0))[1] for hour in hours))
        difference = line.amount_micros - ours
        discrepancy = Decimal(abs(difference)) / Decimal(ours) if ours else None
        results.append(
            LineResult(
                line.line,
                line.period_start,
                line.period_end,
                line.impressions,
                impressions,
                line.amount_micros,
                ours,
                difference,
                discrepancy,
                _verdict(line, impressions, ours, tolerance, open_hours),
                open_hours,
            )
        )
    return results


def _verdict(line: InvoiceLine, impressions: int, ours: int, tolerance: Decimal, open_hours: tuple) -> Verdict:
    if open_hours:
        return Verdict.OPEN
    step = MICROS // 10**line.places  # the invoice's precision, in micros
    rounded = (ours // step + (1 if ours % step * 2 >= step else 0)) * step  # half up
    if impressions == line.impressions and rounded == line.amount_micros:
        return Verdict.AGREES
    if _within(line.amount_micros, ours, tolerance) and _within(line.impressions, impressions, tolerance):
        return Verdict.WITHIN_TOLERANCE
    return Verdict.DISPUTED


def _within(theirs: int, ours: int, tolerance: Decimal) -> bool:
    return Decimal(abs(theirs - ours)) <= tolerance * Decimal(ours)


# --- the lake's side ---


def exchange_costs(settings: Settings, exchange_id: str, start: datetime, end: datetime) -> dict[datetime, tuple]:
    """gold/exchange_costs_hourly of one exchange for hours in [start, end): hour -> (impressions, Σ price CPM)."""
    uri, options = settings.delta_rs_location(Table.GOLD_EXCHANGE_COSTS_HOURLY)
    if not DeltaTable.is_deltatable(uri, options):
        return {}
    dataset = DeltaTable(uri, storage_options=options or None).to_pyarrow_dataset()
    hour = pc.field("hour")
    rows = dataset.to_table(
        filter=(pc.field("exchange_id") == exchange_id) & (hour >= pd.Timestamp(start)) & (hour < pd.Timestamp(end)),
        columns=["hour", "exchange_impressions", "media_cost_cpm_micros"],
    ).to_pylist()
    return {_utc(row["hour"]): (int(row["exchange_impressions"]), int(row["media_cost_cpm_micros"])) for row in rows}


def bill_statuses(settings: Settings, start: datetime, end: datetime) -> dict[datetime, str]:
    """The bill status of each hour billed in [start, end) (see reports.hour_status)."""
    uri, options = settings.delta_rs_location(Table.GOLD_BILLING_HOURLY)
    if not DeltaTable.is_deltatable(uri, options):
        return {}
    bill = reports.read_bill(settings, start=start, end=end)
    return {_utc(hour): reports.hour_status(rows) for hour, rows in bill.groupby("hour")}


def _utc(moment: datetime) -> datetime:
    moment = pd.Timestamp(moment).to_pydatetime()
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass
class InvoiceReconciliation:
    exchange_id: str
    source: str
    tolerance: Decimal
    lines: list[LineResult]
    rejected: list[RejectedLine]

    @property
    def disputed(self) -> list[LineResult]:
        return [line for line in self.lines if line.verdict == Verdict.DISPUTED]

    def totals(self) -> dict[str, int]:
        judged = [line for line in self.lines if line.verdict != Verdict.OPEN]
        return {
            "invoiced_micros": sum(line.invoiced_micros for line in judged),
            "our_micros": sum(line.our_micros for line in judged),
            "disputed_micros": sum(line.difference_micros for line in self.disputed),
        }

    def as_json(self) -> dict:
        return {
            "exchange_id": self.exchange_id, "source": self.source, "tolerance": str(self.tolerance),
            "lines": [asdict(line) for line in self.lines], "rejected": [asdict(line) for line in self.rejected],
            "totals": self.totals(),
        }  # fmt: skip

    def report(self) -> str:
        out = [f"invoice {self.source} of exchange {self.exchange_id} (tolerance {self.tolerance:%}):"]
        for line in self.lines:
            share = f"{line.discrepancy:.2%}" if line.discrepancy is not None else "n/a"
            out.append(
                f"  line {line.line} {line.period_start:%Y-%m-%dT%H:00Z}..{line.period_end:%Y-%m-%dT%H:00Z}: "
                f"{line.verdict.value}; invoiced {_usd(line.invoiced_micros)} for {line.invoiced_impressions} "
                f"impressions, ours {_usd(line.our_micros)} for {line.our_impressions} "
                f"(difference {_usd(line.difference_micros)}, {share})"
                + (f"; not final: {', '.join(line.open_hours)}" if line.open_hours else "")
            )
        for line in self.rejected:
            out.append(f"  line {line.line} rejected: {line.reason} ({line.text})")
        totals = self.totals()
        out.append(
            f"  judged lines: invoiced {_usd(totals['invoiced_micros'])}, ours {_usd(totals['our_micros'])}, "
            f"disputed {_usd(totals['disputed_micros'])} over {len(self.disputed)} line(s); "
            f"{len(self.rejected)} line(s) rejected"
        )
        return "\n".join(out)


def _usd(micros: int) -> str:
    return f"{Decimal(micros) / MICROS:.6f} USD"


def write_report(settings: Settings, result: InvoiceReconciliation) -> Path:
    """reports/billing/invoices/<exchange>/<invoice file's stem>.json: every line's figures and verdict, and the
    rejected lines with their reasons."""
    path = settings.reports_dir / "billing" / "invoices" / result.exchange_id / f"{Path(result.source).stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.as_json(), default=str, indent=2))
    return path


def reconcile_invoice(settings: Settings, exchange_id: str, text: str, source: str) -> InvoiceReconciliation:
    """Reads the invoice ``text`` and judges each line against the lake. Raises InvoiceError on an unreadable file."""
    if not EXCHANGE_ID.fullmatch(exchange_id):
        raise InvoiceError(
            f"exchange {exchange_id!r} is not a caller id: up to 64 letters, digits, '.', '_' or '-' (see "
            "`adstream callers list`)"
        )
    lines, rejected = parse_invoice(text)
    tolerance = Decimal(str(settings.exchange_invoice_tolerance))
    if not lines:
        return InvoiceReconciliation(exchange_id, source, tolerance, [], rejected)
    start = min(line.period_start for line in lines)
    end = max(line.period_end for line in lines)
    costs = exchange_costs(settings, exchange_id, start, end)
    statuses = bill_statuses(settings, start, end)
    return InvoiceReconciliation(exchange_id, source, tolerance, reconcile(lines, costs, statuses, tolerance=tolerance),
                                 rejected)  # fmt: skip
