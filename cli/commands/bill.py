"""``adstream bill``: bill, reconcile and export hours of spend (gold/billing_hourly, reports/billing/);
``adstream invoice``: an exchange's invoice against what its win notices priced."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from cli.commands import choices, iso_time, usage_error
from cli.lazy import commands_app
from cli.resources import current
from spark_jobs.billing import invoices, job

commands = commands_app()

BillStep = choices("BillStep", job.STEP_CHOICES)


@commands.command("bill")
def bill_command(
    ctx: typer.Context,
    hour: Annotated[
        datetime | None,
        typer.Option(parser=iso_time, metavar="ISO", help="the hour to bill, e.g. 2026-11-24T10:00 (UTC)"),
    ] = None,
    start: Annotated[
        datetime | None, typer.Option("--from", parser=iso_time, metavar="ISO", help="first hour of a range")
    ] = None,
    end: Annotated[
        datetime | None, typer.Option("--to", parser=iso_time, metavar="ISO", help="end of the range (exclusive)")
    ] = None,
    step: Annotated[BillStep, typer.Option(help="run one step only (default: all)")] = BillStep["all"],
    with_provisional: Annotated[
        bool, typer.Option("--with-provisional", help="also re-bill the provisional hours before it (as the DAG)")
    ] = False,
) -> None:
    """Bill an hour (or a range of hours), reconcile it and export it for finance."""
    try:
        hours = job.hours_for(hour, start, end)
    except ValueError as exc:
        raise usage_error(exc) from None
    steps = job.steps_for(str(step))
    resources = current(ctx)
    spark = resources.spark(job.SPARK_APP, job.SPARK_CONF) if job.needs_spark(steps) else None
    try:
        job.run_steps(spark, resources.settings, hours, steps, with_provisional=with_provisional, now=datetime.now(UTC))
    except job.FAILURES as exc:
        print(f"billing failed: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None


@commands.command("invoice")
def invoice_command(
    ctx: typer.Context,
    exchange: Annotated[str, typer.Argument(help="the exchange's caller id (its API key's owner)")],
    invoice: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="its invoice: a CSV, see the README")
    ],
) -> None:
    """Reconcile an exchange's invoice with what its win notices priced (gold/exchange_costs_hourly).

    Exits 1 when a line is disputed or rejected; the report goes to reports/billing/invoices/."""
    settings = current(ctx).settings
    try:
        text = invoice.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise usage_error(
            ValueError(f"{invoice} is not UTF-8 text (byte {exc.start}): export the invoice as CSV")
        ) from None
    try:
        result = invoices.reconcile_invoice(settings, exchange, text, str(invoice))
    except invoices.InvoiceError as exc:
        raise usage_error(exc) from None
    print(result.report())
    print(f"report: {invoices.write_report(settings, result)}")
    if result.disputed or result.rejected:
        raise typer.Exit(1)
