"""``adstream train | promote | compare | calibrate``: CTR training, the guarded promotion, training runs side
by side, and the online pCTR calibration."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from nbclient.exceptions import CellExecutionError

from cli.lazy import commands_app, fail
from cli.resources import current
from ml import calibrate as calibration_job
from ml.compare import (
    DEFAULT_LAST,
    NOTEBOOK,
    NoTrainingRuns,
    compare_runs,
    execute_comparison_notebook,
    executed_notebook_path,
    report,
)
from ml.features import MissingFeatureError
from ml.promote import NoTrainingRun, decide_promotion
from ml.tracking import TrackingServerUnreachable, ensure_reachable
from ml.train import (
    HOLDOUT_FRACTION,
    TrainingSetError,
    candidate_summary,
    default_training_table,
    fit_and_register,
    load_training_set,
    promote,
    promotion_summary,
)

commands = commands_app()


@commands.command()
def train(
    ctx: typer.Context,
    training_table: Annotated[
        str | None,
        typer.Option(help="path or URI of the Delta training set (default: LAKE_ROOT/gold/ctr_training_set)"),
    ] = None,
    holdout_fraction: Annotated[float, typer.Option()] = HOLDOUT_FRACTION,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="train and evaluate on one dataset's examples alone (advertising, ads16, auctions); registers nothing"
        ),
    ] = None,
    skip_promotion: Annotated[
        bool, typer.Option("--skip-promotion", help="register the challenger only (adstream promote decides)")
    ] = False,
) -> None:
    """Train the CTR model families on gold/ctr_training_set, register the best, guard its promotion."""
    settings = current(ctx).settings
    if training_table:
        location, options = training_table, {}
    else:
        location, options = default_training_table(settings)
    try:
        ensure_reachable(settings.mlflow_tracking_uri)
        frame, version = load_training_set(location, options)
        candidate, holdout = fit_and_register(
            settings, frame, version, training_table=location, holdout_fraction=holdout_fraction,
            register=dataset is None, dataset=dataset,
        )  # fmt: skip
    except (TrainingSetError, MissingFeatureError, TrackingServerUnreachable) as exc:
        raise fail(f"training failed: {exc}") from None
    print(candidate_summary(candidate), flush=True)
    if candidate.model_version is not None and not skip_promotion:
        print(promotion_summary(promote(settings, candidate.parent_run_id, candidate.model_version, holdout)))


@commands.command("promote")
def promote_command(
    ctx: typer.Context,
    training_run: Annotated[str | None, typer.Option(help="MLflow run id of a training (default: the latest)")] = None,
) -> None:
    """The guarded promotion on its own: judge a training run's registered challenger against the champion."""
    try:
        decide_promotion(current(ctx).settings, training_run)
    except (NoTrainingRun, TrainingSetError, TrackingServerUnreachable) as exc:
        raise fail(f"promotion failed: {exc}") from None


@commands.command()
def compare(
    ctx: typer.Context,
    last: Annotated[int, typer.Option(help="how many training runs, newest first")] = DEFAULT_LAST,
    execute_notebook: Annotated[
        bool,
        typer.Option("--execute-notebook", help=f"also execute notebooks/{NOTEBOOK.name} into REPORTS_DIR/notebooks/"),
    ] = False,
) -> None:
    """CTR training runs side by side: every family's holdout metrics, the data it saw, the promotion decision."""
    if last < 1:
        raise typer.BadParameter("--last must be at least 1")
    settings = current(ctx).settings
    try:
        comparison = compare_runs(settings.mlflow_tracking_uri, last)
    except (TrackingServerUnreachable, NoTrainingRuns) as exc:
        raise fail(f"run comparison failed: {exc}") from None
    print(report(comparison), flush=True)
    if not execute_notebook:
        return
    target = executed_notebook_path(settings)
    try:
        execute_comparison_notebook(settings, last)
    except CellExecutionError as exc:
        raise fail(f"notebook {NOTEBOOK.name} failed ({exc.ename}: {exc.evalue}); see {target}") from None
    print(f"\nexecuted notebook written to {target}")


@commands.command()
def calibrate(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="one refresh, then exit")] = False,
    check: Annotated[bool, typer.Option("--check", help="exit 0 if a running job refreshed recently")] = False,
) -> None:
    """Refit each served model's pCTR calibration on logged traffic; keep gold/calibration."""
    settings = current(ctx).settings
    if check:
        raise typer.Exit(0 if calibration_job.is_alive(settings) else 1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise typer.Exit(calibration_job.run(settings, once=once))
