"""``adstream bid-filter train|promote``: train the bid-request filter on silver/auctions; judge a challenger.

The training and the guarded promotion of ``ml.bid_filter_training``; DAG bid_filter_training runs the same
two steps.

    adstream bid-filter train [--auction-log PATH] [--skip-promotion]
    adstream bid-filter promote [--training-run RUN_ID]
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.lazy import commands_app, fail
from cli.resources import current
from ml.bid_filter import AuctionLogError
from ml.bid_filter_training import (
    NoTrainingRun,
    auction_log_location,
    decide_promotion,
    fit_and_register,
    load_auction_log,
    promote,
)
from ml.tracking import TrackingServerUnreachable, ensure_reachable

commands = commands_app(name="bid-filter", help=__doc__.splitlines()[0], no_args_is_help=True)


@commands.command()
def train(
    ctx: typer.Context,
    auction_log: Annotated[
        str | None, typer.Option(help="path or URI of the Delta auction log (default: LAKE_ROOT/silver/auctions)")
    ] = None,
    skip_promotion: Annotated[
        bool, typer.Option("--skip-promotion", help="register the challenger only (bid-filter promote decides)")
    ] = False,
) -> None:
    """Train the bid filter on the auction log, register it as bid-filter@challenger, guard its promotion."""
    settings = current(ctx).settings
    location, options = (auction_log, {}) if auction_log else auction_log_location(settings)
    try:
        ensure_reachable(settings.mlflow_tracking_uri)
        log, version = load_auction_log(location, options, days=settings.bid_filter_training_days)
        candidate = fit_and_register(settings, log, version, auction_log=location)
    except (AuctionLogError, TrackingServerUnreachable) as exc:
        raise fail(f"bid filter training failed: {exc}") from None
    print(candidate.summary(), flush=True)
    if not skip_promotion:
        print(promote(settings, candidate.run_id, candidate.model_version, candidate.trained.holdout).summary())


@commands.command("promote")
def promote_challenger(
    ctx: typer.Context,
    training_run: Annotated[
        str | None, typer.Option(help="MLflow run id of a bid-filter training (default: the latest)")
    ] = None,
) -> None:
    """Judge a training run's bid-filter challenger against the champion on that run's holdout."""
    try:
        decide_promotion(current(ctx).settings, training_run)
    except (NoTrainingRun, AuctionLogError, TrackingServerUnreachable) as exc:
        raise fail(f"bid filter promotion failed: {exc}") from None
