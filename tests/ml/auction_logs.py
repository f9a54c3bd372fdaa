"""Auction logs and bid-filter versions for the bid filter's tests: a synthetic silver/auctions written as the
streaming job writes it (Delta, partitioned by event_date), and a given table registered as training does."""

from __future__ import annotations

import mlflow
import pandas as pd
from deltalake import write_deltalake

from adstream.contracts import BID_FILTER_EXPERIMENT
from benchmarks.bid_filter import synthetic_auction_log
from ml.bid_filter import BidFilter
from ml.bid_filter_registry import ARTIFACT_DIR, ARTIFACT_FILE, register_challenger
from ml.tracking import experiment_id, point_fluent_api_at

__all__ = ["register_table", "synthetic_auction_log", "write_auction_log"]


def write_auction_log(location: str, log: pd.DataFrame, mode: str = "append") -> None:
    """``log`` into the Delta table at ``location``, partitioned by event_date as silver/auctions is."""
    frame = log.assign(event_date=log["event_time"].dt.date)
    write_deltalake(location, frame, mode=mode, partition_by=["event_date"])


def register_table(uri: str, bid_filter: BidFilter) -> str:
    """``bid_filter`` logged in a run of its own and registered as a ``bid-filter`` challenger; the version."""
    point_fluent_api_at(uri)
    with mlflow.start_run(experiment_id=experiment_id(uri, BID_FILTER_EXPERIMENT)) as run:
        mlflow.log_text(bid_filter.to_json(), f"{ARTIFACT_DIR}/{ARTIFACT_FILE}")
    return register_challenger(uri, run.info.run_id)
