"""``adstream silver | features | maintain | smoke``: the lake's batch Spark jobs."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Annotated

import typer

from cli.commands import choices, iso_time, usage_error
from cli.lazy import commands_app
from cli.resources import SPARK_APPS, Resources, current
from spark_jobs import features, maintenance, silver, smoke

commands = commands_app()

Which = choices("Which", silver.WHICH)
Step = choices("Step", smoke.STEPS)


def _print_tables(resources: Resources, rows_by_table: dict[str, int]) -> None:
    for table, rows in rows_by_table.items():
        print(f"{table}: {rows} rows at {resources.settings.lake_path(table)}")


@commands.command("silver")
def silver_command(ctx: typer.Context, which: Annotated[Which, typer.Argument()] = Which["all"]) -> None:
    """Bronze -> silver users and ads."""
    resources = current(ctx)
    _print_tables(resources, silver.build(resources.spark(SPARK_APPS["silver"]), resources.settings, str(which)))


@commands.command("features")
def features_command(
    ctx: typer.Context,
    start: Annotated[
        datetime | None, typer.Option(parser=iso_time, metavar="ISO", help="interval start (inclusive)")
    ] = None,
    end: Annotated[
        datetime | None, typer.Option(parser=iso_time, metavar="ISO", help="interval end (exclusive)")
    ] = None,
) -> None:
    """Silver and logged events -> gold user and ad features and the CTR training set."""
    resources = current(ctx)
    spark = resources.spark(SPARK_APPS["features"])
    _print_tables(resources, features.build(spark, resources.settings, start, end))


@commands.command("maintain")
def maintain_command(
    ctx: typer.Context,
    table: Annotated[
        list[str] | None,
        typer.Option(metavar="TABLE", help=f"a table under LAKE_ROOT (default: {len(maintenance.STREAMING_TABLES)})"),
    ] = None,
    retention_hours: Annotated[float, typer.Option()] = maintenance.SAFE_RETENTION_HOURS,
    allow_short_retention: Annotated[
        bool, typer.Option("--allow-short-retention", help="a disposable lake only")
    ] = False,
) -> None:
    """Compacts the streaming tables' small files and vacuums them with a safe retention."""
    try:
        maintenance.check_retention(retention_hours, allow_short_retention)
    except maintenance.UnsafeRetention as exc:
        raise usage_error(exc) from None
    resources = current(ctx)
    maintenance.maintain(
        resources.spark(SPARK_APPS["maintain"]),
        resources.settings,
        table or maintenance.STREAMING_TABLES,
        retention_hours,
        allow_short_retention,
    )


@commands.command("smoke")
def smoke_command(
    ctx: typer.Context,
    step: Annotated[Step, typer.Argument()],
    events: Annotated[int, typer.Option()] = 100,
    run_id: Annotated[str | None, typer.Option(help="defaults to a new random id for `all` and `produce`")] = None,
) -> None:
    """Kafka -> Spark -> Delta, proving the engines work together."""
    try:
        run_id = smoke.run_id_for(str(step), run_id)
    except ValueError as exc:
        raise usage_error(exc) from None
    resources = current(ctx)
    spark = resources.spark(SPARK_APPS["smoke"]) if smoke.needs_spark(str(step)) else None
    try:
        smoke.run_steps(resources.settings, spark, str(step), run_id, events)
    except smoke.SmokeFailed as exc:
        print(f"smoke failed: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
