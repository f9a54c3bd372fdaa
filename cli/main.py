"""``adstream``: the one command line for every job, service and tool.

Product commands live in ``cli.commands``, one module per area, imported only when one of
its commands runs (``cli.lazy``). Tool packages (simulator, benchmarks, devstack) add their
commands, listed the same way, through the ``adstream.commands`` entry points; the Docker
image ships without them, and then simply lacks those commands.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from cli.lazy import CommandIndex, LazyCommand, add_lazy_commands

ENTRY_POINT_GROUP = "adstream.commands"

# command -> (module defining it, one-line help shown by `adstream --help` without importing the module)
COMMANDS: CommandIndex = {
    "ingest": ("cli.commands.ingest", "Load Kaggle files into bronze Delta, gated by Great Expectations."),
    "silver": ("cli.commands.lake", "Build silver users and ads from bronze."),
    "features": ("cli.commands.lake", "Build the gold features and the CTR training set."),
    "train": ("cli.commands.ml", "Train the CTR model families, register the best, guard its promotion."),
    "promote": ("cli.commands.ml", "Judge a training run's challenger against the champion."),
    "compare": ("cli.commands.ml", "Compare CTR training runs side by side."),
    "calibrate": ("cli.commands.ml", "Refit pCTR calibration on logged traffic; keep gold/calibration."),
    "bid-filter": ("cli.commands.bid_filter", "Train the bid-request filter on silver/auctions; judge a challenger."),
    "optimize": ("cli.commands.optimize", "Re-bid optimized campaigns per platform from live Kafka data."),
    "bill": ("cli.commands.bill", "Bill, reconcile and export hours of spend."),
    "invoice": ("cli.commands.bill", "Reconcile an exchange's invoice with what its win notices priced."),
    "maintain": ("cli.commands.lake", "Compact and vacuum the streaming tables."),
    "smoke": ("cli.commands.lake", "Kafka -> Spark -> Delta smoke test."),
    "stream": ("cli.commands.stream", "The streaming job: Kafka topics into Delta."),
    "serve": ("cli.commands.serve", "The auction service under uvicorn."),
    "ad-manager": ("cli.commands.ad_manager", "Apply campaign instructions to the campaign store."),
    "campaigns": ("cli.commands.campaigns", "Publish campaign instructions, or show a campaign."),
    "callers": ("cli.commands.callers", "Make, list and revoke the API keys of auction callers."),
    "dashboard": ("cli.commands.dashboard", "The live dashboard, read-only."),
}


def load_command(name: str) -> TyperCommand | TyperGroup:
    """The click command ``name`` of its ``cli.commands`` module."""
    return LazyCommand(name, *COMMANDS[name]).load()


class AdstreamCommands(TyperGroup):
    """The root group: the product's commands, each loaded when it runs; ``main`` adds the tools'."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        add_lazy_commands(self, COMMANDS)

    def list_commands(self, ctx: typer.Context) -> list[str]:
        # the product's commands first, then the tools'
        return [*COMMANDS, *(name for name in super().list_commands(ctx) if name not in COMMANDS)]


app = typer.Typer(
    cls=AdstreamCommands,
    help="AdStream: every job, service and tool of the platform.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain click output: errors and help read the same in logs and health checks
    pretty_exceptions_enable=False,  # plain tracebacks, without local variables (settings hold secrets)
)


@app.callback()
def _root() -> None:
    """AdStream: every job, service and tool of the platform."""


def add_tool_commands(root: typer.Typer, group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Adds each installed tool's commands at the top level of ``root``; returns the tools added.

    A tool whose package is absent (the Docker image ships product code only) is skipped;
    any other import error is a bug and raises.
    """
    added = []
    for entry_point in entry_points(group=group):
        package = entry_point.module.split(".")[0]
        try:
            tool_app = entry_point.load()
        except ModuleNotFoundError as exc:
            if exc.name != package:
                raise
            continue
        root.add_typer(tool_app)
        added.append(entry_point.name)
    return added


def main() -> None:
    add_tool_commands(app)
    app()
