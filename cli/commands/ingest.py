"""``adstream ingest [advertising|ads16|amazon|all]``: load Kaggle files into bronze Delta, gated by GX."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cli.commands import choices
from cli.lazy import commands_app
from cli.resources import current
from ingestion.pipeline import DATASETS, IngestionFailed, ingest

Dataset = choices("Dataset", [*DATASETS, "all"])

commands = commands_app()


@commands.command("ingest")
def ingest_command(
    ctx: typer.Context,
    dataset: Annotated[Dataset, typer.Argument()] = Dataset["all"],
    load_id: Annotated[str | None, typer.Option(help="defaults to a timestamped id")] = None,
) -> None:
    """Load Kaggle files into bronze Delta, gated by Great Expectations."""
    settings = current(ctx).settings
    names = list(DATASETS) if dataset == "all" else [str(dataset)]
    try:
        for name in names:
            print(ingest(settings, name, load_id).summary(), flush=True)
    except (IngestionFailed, FileNotFoundError) as exc:
        print(f"ingestion failed: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
