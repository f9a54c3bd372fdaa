"""Train the bid-request filter on silver/auctions, log it to MLflow, register it, guard its promotion.

    adstream bid-filter train [--auction-log PATH] [--skip-promotion]
    adstream bid-filter promote [--training-run RUN_ID]   (the promotion step on its own)

One MLflow run (experiment ``bid-filter``) per training: its parameters (the table, its Delta version, the
window, the split), the requests fitted on and the holdout as input datasets whose source is silver/auctions
at that version, and the exported table (``bid_filter/``), which is registered as a new ``bid-filter``
version (alias ``challenger``) and promoted under the rule of ``ml.bid_filter_registry``. The holdout figures
at the chosen threshold (revenue retained, shares shed, ROC AUC) are logged on the run and on its logged model,
judged on the holdout dataset. The model, its features, label and threshold are ``ml.bid_filter``'s.

Reads the BID_FILTER_TRAINING_DAYS x 24 hours up to the newest request the table version holds (not up to a
clock: the same version always gives the same requests, which is how the promotion step rebuilds the
holdout). Five days by default, so that the holdout (the latest fifth of the requests) is about the last
day, every hour of it: a holdout of fewer hours misstates the revenue of the hours it lacks (fill rates
differ by hour), and the threshold chosen on it with them.

A table version that already produced a version is not trained again unless forced; an auction log that
cannot train yet (fewer than BID_FILTER_MIN_REQUESTS requests, no revenue) is reported, and the service
keeps running without a filter or with the one it has.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import mlflow
import pandas as pd
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError
from mlflow.data.dataset import Dataset

from adstream.contracts import BID_FILTER_EXPERIMENT, BID_FILTER_MODEL, Table
from adstream.settings import Settings
from ml.bid_filter import (
    FEATURE_COLUMNS,
    HOLDOUT_FRACTION,
    LABEL,
    LOG_COLUMNS,
    MIN_TOKEN_COUNT,
    REGULARIZATION_C,
    REVENUE,
    TIME_COLUMN,
    AuctionLogError,
    TrainedBidFilter,
    split,
    train_bid_filter,
    training_rows,
)
from ml.bid_filter_registry import (
    ARTIFACT_DIR,
    ARTIFACT_FILE,
    MODEL_FAMILY,
    Promotion,
    apply_promotion,
    register_challenger,
)
from ml.datasets import delta_dataset
from ml.tracking import ensure_reachable, experiment_id, point_fluent_api_at, search_runs, tracking_client

REGISTERED_VERSION_TAG = "registered_version"  # on the training run: the bid-filter version it produced
PARTITION = "event_date"


class NoTrainingRun(LookupError):
    """There is no bid-filter training run (with a registered version) to promote."""


def auction_log_location(settings: Settings) -> tuple[str, dict[str, str]]:
    return settings.delta_rs_location(Table.SILVER_AUCTIONS)


def load_auction_log(
    location: str, storage_options: Mapping[str, str] | None = None, version: int | None = None, days: int = 5
) -> tuple[pd.DataFrame, int]:
    """The columns the filter reads from the Delta table at ``location`` (at ``version``, else the latest),
    over the ``days`` x 24 hours up to its newest request (only the event_date partitions those can be in are
    read); with the version read."""
    try:
        table = DeltaTable(location, storage_options=dict(storage_options or {}), version=version)
    except TableNotFoundError as exc:
        raise AuctionLogError(f"no Delta table at {location}: the streaming job writes it (adstream stream)") from exc
    present = {field.name for field in table.schema().fields}
    columns = [name for name in LOG_COLUMNS if name in present]
    partitions = None
    if PARTITION in table.metadata().partition_columns:
        dates = [date.fromisoformat(p[PARTITION]) for p in table.partitions() if p.get(PARTITION)]
        if dates:
            partitions = [(PARTITION, ">=", (max(dates) - timedelta(days=days)).isoformat())]
    log = table.to_pandas(partitions=partitions, columns=columns)
    if TIME_COLUMN in log and not log.empty:
        log = log.sort_values(TIME_COLUMN, kind="stable")  # partitions come back in no set order
        times = pd.to_datetime(log[TIME_COLUMN], utc=True)
        log = log.loc[(times > times.max() - timedelta(days=days)).to_numpy()].reset_index(drop=True)
    return log, table.version()


@dataclass(frozen=True)
class Candidate:
    """One training: its run, what it read, the filter, and the version registered."""

    run_id: str
    auction_log_version: int | None
    trained: TrainedBidFilter
    model_version: str
    model_id: str  # the run's logged model, which carries the holdout figures

    def summary(self) -> str:
        m = self.trained.metrics
        lines = [
            f"auction log version {self.auction_log_version}, run {self.run_id}: "
            f"{len(self.trained.train)} requests to fit, {len(self.trained.holdout)} in the holdout",
            f"threshold {m['threshold']:.6f}: keeps {m['revenue_retained']:.2%} of the holdout's revenue "
            f"({m['out_of_time_revenue_retained']:.2%} out of time), sheds {m['shed_share']:.2%} of requests and "
            f"{m['no_fill_shed_share']:.2%} of those that earn nothing; ROC AUC {m['roc_auc']:.4f}",
            f"registered as {BID_FILTER_MODEL} version {self.model_version} (challenger)",
        ]
        return "\n".join(lines)


def _params(settings: Settings, auction_log: str, version: int | None, trained: TrainedBidFilter) -> dict[str, Any]:
    def time_range(frame: pd.DataFrame) -> str:
        return f"{frame[TIME_COLUMN].min().isoformat()} .. {frame[TIME_COLUMN].max().isoformat()}"

    return {
        "auction_log": auction_log or "(in-memory frame)",
        "auction_log_version": "unknown" if version is None else str(version),
        "training_days": settings.bid_filter_training_days,
        "holdout_fraction": HOLDOUT_FRACTION,
        "revenue_target": settings.bid_filter_revenue_target,
        "train_requests": len(trained.train),
        "holdout_requests": len(trained.holdout),
        "train_time_range": time_range(trained.train),
        "holdout_time_range": time_range(trained.holdout),
        "features": ",".join((*FEATURE_COLUMNS, "hour", "day_of_week")),
        "label": "filled with revenue > 0",
        "model": "logistic regression on one-hot tokens and crosses, exported as a weight table",
        "model.C": REGULARIZATION_C,
        "model.min_token_count": MIN_TOKEN_COUNT,
        "model.tokens": len(trained.bid_filter.weights),
    }


def _log_datasets(trained: TrainedBidFilter, auction_log: str, version: int | None) -> Dataset | None:
    """The requests fitted on and the holdout, as the run's inputs: datasets whose source is the Delta table at
    ``version``. Returns the holdout's; None for a log read from no table version (nothing to point at)."""
    if not auction_log or version is None:
        return None

    def dataset(requests: pd.DataFrame) -> Dataset:
        frame = requests[[*LOG_COLUMNS, LABEL, REVENUE]]
        return delta_dataset(frame, auction_log, version, Table.SILVER_AUCTIONS.value, LABEL)

    fitted_on, holdout = dataset(trained.train), dataset(trained.holdout)
    mlflow.log_input(fitted_on, context="training")
    mlflow.log_input(holdout, context="evaluation")
    return holdout


def fit_and_register(
    settings: Settings,
    log: pd.DataFrame,
    log_version: int | None,
    *,
    auction_log: str = "",
) -> Candidate:
    """Trains on ``log`` (silver/auctions rows), logs the run and registers the challenger. Refuses
    (``AuctionLogError``) before any MLflow call when the log cannot train."""
    trained = train_bid_filter(
        log, revenue_target=settings.bid_filter_revenue_target, min_requests=settings.bid_filter_min_requests
    )
    tracking_uri = settings.mlflow_tracking_uri
    ensure_reachable(tracking_uri)
    experiment = experiment_id(tracking_uri, BID_FILTER_EXPERIMENT)
    point_fluent_api_at(tracking_uri)
    with mlflow.start_run(experiment_id=experiment, run_name="bid-filter-training") as run:
        mlflow.log_params(_params(settings, auction_log, log_version, trained))
        mlflow.set_tag("run_kind", "training")
        holdout = _log_datasets(trained, auction_log, log_version)
        mlflow.log_text(trained.bid_filter.to_json(), f"{ARTIFACT_DIR}/{ARTIFACT_FILE}")
        # The table is JSON, not an MLflow Model: the logged model is "external", its artifact the run's
        # bid_filter/ (which the registered version points at), so it carries the figures without a second copy.
        table = f"runs:/{run.info.run_id}/{ARTIFACT_DIR}/{ARTIFACT_FILE}"
        logged = mlflow.create_external_model(name=BID_FILTER_MODEL, model_type=MODEL_FAMILY, tags={"table": table})
        holdout_metrics = {f"holdout.{name}": value for name, value in trained.metrics.items()}
        mlflow.log_metrics(holdout_metrics, model_id=logged.model_id, dataset=holdout)
        version = register_challenger(tracking_uri, run.info.run_id)
        mlflow.set_tag(REGISTERED_VERSION_TAG, version)
    return Candidate(run.info.run_id, log_version, trained, version, logged.model_id)


def promote(settings: Settings, run_id: str, model_version: str, holdout: pd.DataFrame) -> Promotion:
    """The guarded promotion of ``model_version`` on ``holdout`` (``ml.bid_filter_registry``)."""
    return apply_promotion(
        settings.mlflow_tracking_uri, model_version, holdout, run_id, settings.bid_filter_revenue_target
    )


def registering_runs(settings: Settings, max_results: int) -> list[Any]:
    """The latest bid-filter training runs that registered a version, newest first."""
    return search_runs(
        tracking_client(settings.mlflow_tracking_uri), BID_FILTER_EXPERIMENT,
        f"tags.{REGISTERED_VERSION_TAG} != ''", max_results,
    )  # fmt: skip


def train_challenger(settings: Settings, *, force: bool = False, table_version: int | None = None) -> dict[str, Any]:
    """DAG bid_filter_training's first step: trains on silver/auctions at ``table_version`` (None: the latest)
    and registers the challenger, unless this table version was trained already (and not ``force``) or the log
    cannot train yet (said why)."""
    ensure_reachable(settings.mlflow_tracking_uri)
    location, options = auction_log_location(settings)
    try:
        log, version = load_auction_log(
            location, options, version=table_version, days=settings.bid_filter_training_days
        )
        if not force:
            for run in registering_runs(settings, max_results=20):
                params = run.data.params
                if params.get("auction_log") == location and params.get("auction_log_version") == str(version):
                    print(f"auction log version {version} was already trained in run {run.info.run_id}; nothing to do")
                    return {"trained": False, "training_run": run.info.run_id, "auction_log_version": version}
        candidate = fit_and_register(settings, log, version, auction_log=location)
    except AuctionLogError as exc:
        print(f"no bid filter trained: {exc}", flush=True)
        return {"trained": False, "training_run": None, "reason": str(exc)}
    print(candidate.summary(), flush=True)
    return {
        "trained": True,
        "training_run": candidate.run_id,
        "model_version": candidate.model_version,
        "logged_model": candidate.model_id,
        "auction_log_version": version,
    }


def promote_after_training(settings: Settings, training: Mapping[str, Any]) -> dict[str, Any]:
    """DAG bid_filter_training's second step: decide only when the first one produced something new."""
    if not training["trained"]:
        return {"training_run": training["training_run"], "promoted": False, "reasons": ["nothing new was trained"]}
    return decide_promotion(settings, training["training_run"])


def promote_training_run(settings: Settings, run_id: str) -> Promotion:
    """Rebuilds ``run_id``'s holdout from its logged lineage (table, version, window) and applies the guard."""
    logged = tracking_client(settings.mlflow_tracking_uri).get_run(run_id).data
    params, version = logged.params, logged.tags.get(REGISTERED_VERSION_TAG)
    if not version:
        raise NoTrainingRun(f"run {run_id} registered no {BID_FILTER_MODEL} version")
    if not params["auction_log_version"].isdigit():
        raise AuctionLogError(f"run {run_id} trained on an in-memory frame; its holdout cannot be rebuilt")
    location, options = auction_log_location(settings)
    log, _ = load_auction_log(
        params["auction_log"], options if params["auction_log"] == location else {},
        version=int(params["auction_log_version"]), days=int(params["training_days"]),
    )  # fmt: skip
    _, holdout = split(training_rows(log), float(params["holdout_fraction"]))
    if len(holdout) != int(params["holdout_requests"]):
        raise AuctionLogError(
            f"the rebuilt holdout has {len(holdout)} requests, run {run_id} logged {params['holdout_requests']}"
        )
    return promote(settings, run_id, version, holdout)


def decide_promotion(settings: Settings, training_run: str | None = None) -> dict[str, Any]:
    """The promotion decision for one training run (default: the latest); prints it and returns it as values."""
    ensure_reachable(settings.mlflow_tracking_uri)
    if training_run is None:
        runs = registering_runs(settings, max_results=1)
        if not runs:
            raise NoTrainingRun(
                f"no training run with a registered version in experiment {BID_FILTER_EXPERIMENT!r}; "
                "run `adstream bid-filter train`"
            )
        training_run = runs[0].info.run_id
    promotion = promote_training_run(settings, training_run)
    print(promotion.summary(), flush=True)
    return {"training_run": training_run, **promotion.outcome()}
