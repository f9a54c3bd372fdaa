"""``adstream stream``: the streaming job, Kafka topics into Delta, until stopped (or ``--check`` its heartbeat)."""

from __future__ import annotations

from typing import Annotated

import typer
from pyspark.sql import SparkSession

from cli.commands import choices, usage_error
from cli.lazy import commands_app
from cli.resources import current
from spark_jobs import streaming

commands = commands_app()

Source = choices("Source", streaming.SOURCE_CHOICES)


@commands.command("stream")
def stream_command(
    ctx: typer.Context,
    source: Annotated[Source, typer.Option()] = Source["all"],
    available_now: Annotated[
        bool, typer.Option("--available-now", help="process what the topics hold, then exit")
    ] = False,
    trigger_s: Annotated[float | None, typer.Option(help="micro-batch interval (default: STREAM_TRIGGER_S)")] = None,
    topic: Annotated[
        str | None, typer.Option(help="read this topic instead of the source's (one --source only)")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="exit 0 if a running job beat recently (health check)")
    ] = False,
) -> None:
    """Kafka feedback and auction topics -> silver Delta tables, until SIGTERM or SIGINT."""
    resources = current(ctx)
    settings = resources.settings
    if check:  # the health check: no logging setup, no Spark
        raise typer.Exit(streaming.check_heartbeat(settings))
    try:
        sources = streaming.sources_for(str(source), topic)
    except ValueError as exc:
        raise usage_error(exc) from None
    streaming.configure_logging()

    def start_spark() -> SparkSession:
        # Called by the job once it ignores SIGTERM/SIGINT, so that the JVM it starts inherits that.
        return resources.spark(streaming.SPARK_APP, streaming.spark_extra(settings), long_running=True)

    raise typer.Exit(
        streaming.run_until_stopped(settings, sources, start_spark, available_now=available_now, trigger_s=trigger_s)
    )
