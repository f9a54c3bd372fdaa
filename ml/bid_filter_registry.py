"""The ``bid-filter`` registry: versions from training runs, the table serving loads, the guarded promotion.

A version is the exported table of one training run (``bid_filter/bid_filter.json`` in the run, see
``ml.bid_filter.BidFilter.to_json``): JSON, so loading it runs no code. New versions get the alias
``challenger``; ``champion`` moves only under this rule, judged on the holdout of the challenger's training
(the latest requests of the auction log), with both versions re-scored from their registered tables, each
at its own threshold (the one serving would apply):

- the challenger keeps at least the revenue target (99 %) of the holdout's revenue, and
- there is no champion, or the champion keeps less than the target there (the traffic moved away from
  the data it was fitted on), or the challenger sheds at least the share of requests the champion sheds.

The challenger's threshold was chosen on this holdout, so its revenue test is met by construction but
for a degenerate table (it is checked all the same); the out-of-time figure of its training
(``out_of_time_revenue_retained``) says what a threshold keeps on requests it was not chosen on.
The decision is written to the training run like the CTR model's (``ml.registry.conclude_promotion``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from mlflow.artifacts import download_artifacts

from adstream.contracts import BID_FILTER_MODEL, CHALLENGER_ALIAS, CHAMPION_ALIAS
from ml.bid_filter import BidFilter, evaluate
from ml.registry import Decision, Promotion, add_version, conclude_promotion, version_by_alias
from ml.tracking import tracking_client

ARTIFACT_DIR = "bid_filter"  # in the training run: what a version's source points at
ARTIFACT_FILE = "bid_filter.json"
MODEL_FAMILY = "logistic_regression_table"


def register_challenger(tracking_uri: str, run_id: str) -> str:
    """Registers the table logged by run ``run_id`` as a new ``bid-filter`` version, alias ``challenger``."""
    version = add_version(
        tracking_uri, BID_FILTER_MODEL, f"runs:/{run_id}/{ARTIFACT_DIR}", run_id, {"model_family": MODEL_FAMILY}
    )
    tracking_client(tracking_uri).set_registered_model_alias(BID_FILTER_MODEL, CHALLENGER_ALIAS, version)
    return version


def champion_version(tracking_uri: str) -> str | None:
    """The version ``bid-filter@champion`` points at; None before a first promotion."""
    return version_by_alias(tracking_uri, CHAMPION_ALIAS, BID_FILTER_MODEL)


def load_bid_filter(tracking_uri: str, version: str) -> BidFilter:
    """The table of ``bid-filter`` version ``version``, as registered; ``ValueError`` when it does not parse."""
    source = tracking_client(tracking_uri).get_model_version_download_uri(BID_FILTER_MODEL, version)
    with tempfile.TemporaryDirectory(prefix="bid-filter-") as scratch:
        local = download_artifacts(artifact_uri=source, dst_path=scratch, tracking_uri=tracking_uri)
        return BidFilter.from_json((Path(local) / ARTIFACT_FILE).read_text())


def decide_promotion(
    challenger_metrics: Mapping[str, float], champion_metrics: Mapping[str, float] | None, revenue_target: float
) -> Decision:
    """Whether the challenger replaces the champion (module doc); each at its own threshold on one holdout."""
    retained = challenger_metrics["revenue_retained"]
    reasons = []
    keeps_target = retained >= revenue_target  # False for NaN
    comparison = ">=" if keeps_target else "<"
    reasons.append(f"challenger keeps {retained:.4%} of the holdout's revenue ({comparison} {revenue_target:.2%})")
    if not keeps_target:
        return Decision(False, reasons)
    if champion_metrics is None:
        reasons.append("there is no champion yet")
        return Decision(True, reasons)
    if not champion_metrics["revenue_retained"] >= revenue_target:
        reasons.append(
            f"the champion keeps only {champion_metrics['revenue_retained']:.4%} there, below {revenue_target:.2%}"
        )
        return Decision(True, reasons)
    shed, champion_shed = challenger_metrics["shed_share"], champion_metrics["shed_share"]
    sheds_as_much = shed >= champion_shed
    comparison = ">=" if sheds_as_much else "<"
    reasons.append(
        f"challenger sheds {shed:.4%} of requests {comparison} the champion's {champion_shed:.4%} on the same holdout"
    )
    return Decision(sheds_as_much, reasons)


def apply_promotion(
    tracking_uri: str, challenger_version: str, holdout: pd.DataFrame, run_id: str, revenue_target: float
) -> Promotion:
    """Re-scores the challenger and the champion from the registry on ``holdout`` (rows of
    ``ml.bid_filter.training_rows``), decides, moves the alias and records why in run ``run_id``."""
    champion = champion_version(tracking_uri)
    challenger_metrics = evaluate(load_bid_filter(tracking_uri, challenger_version), holdout)
    champion_metrics = None if champion is None else evaluate(load_bid_filter(tracking_uri, champion), holdout)
    decision = decide_promotion(challenger_metrics, champion_metrics, revenue_target)
    promotion = Promotion(
        decision,
        challenger_version,
        champion,
        challenger_metrics,
        champion_metrics,
        registered_model=BID_FILTER_MODEL,
        bounds={"revenue_target": revenue_target},
    )
    conclude_promotion(tracking_uri, run_id, promotion)
    return promotion
