"""The bid-filter registry: the promotion rule, and the guarded promotion on a real MLflow store."""

import json
from pathlib import Path

import pytest

from adstream.contracts import BID_FILTER_MODEL, CHALLENGER_ALIAS, CHAMPION_ALIAS
from ml.bid_filter import BidFilter, train_bid_filter
from ml.bid_filter_registry import (
    apply_promotion,
    champion_version,
    decide_promotion,
    load_bid_filter,
)
from ml.registry import DECISION_ARTIFACT, version_by_alias
from ml.tracking import tracking_client
from tests.ml.auction_logs import register_table, synthetic_auction_log

# --- the rule ---------------------------------------------------------------------------------


def test_with_no_champion_a_challenger_keeping_the_target_is_promoted():
    decision = decide_promotion({"revenue_retained": 0.991, "shed_share": 0.5}, None, 0.99)
    assert decision.promote
    assert decision.reasons == [
        "challenger keeps 99.1000% of the holdout's revenue (>= 99.00%)", "there is no champion yet",
    ]  # fmt: skip


@pytest.mark.parametrize("retained", [0.9899, float("nan")])
def test_a_challenger_below_the_target_is_not_promoted_however_much_it_sheds(retained):
    decision = decide_promotion({"revenue_retained": retained, "shed_share": 0.9}, None, 0.99)
    assert not decision.promote
    assert "(< 99.00%)" in decision.reasons[0]


@pytest.mark.parametrize(("shed", "promoted"), [(0.61, True), (0.60, True), (0.59, False)])
def test_against_a_champion_keeping_the_target_the_challenger_must_shed_at_least_as_much(shed, promoted):
    decision = decide_promotion(
        {"revenue_retained": 0.995, "shed_share": shed}, {"revenue_retained": 0.992, "shed_share": 0.60}, 0.99
    )
    assert decision.promote is promoted
    assert decision.reasons[-1].endswith("the champion's 60.0000% on the same holdout")


def test_a_champion_that_no_longer_keeps_the_target_gives_way():
    decision = decide_promotion(
        {"revenue_retained": 0.99, "shed_share": 0.40}, {"revenue_retained": 0.97, "shed_share": 0.70}, 0.99
    )
    assert decision.promote
    assert decision.reasons[-1] == "the champion keeps only 97.0000% there, below 99.00%"


# --- applied to a real registry -------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    """A filter trained on a log with a signal, and one trained where the features say nothing."""
    log = synthetic_auction_log(8_000, seed=11)
    good = train_bid_filter(log)
    noise = log.copy()
    for column in ("placement", "country", "domain", "device_type", "publisher_id"):
        noise[column] = noise[column].sample(frac=1.0, random_state=5).to_numpy()
    return good, train_bid_filter(noise)


def _decision(uri: str, run_id: str) -> dict:
    client = tracking_client(uri)
    local = client.download_artifacts(run_id, DECISION_ARTIFACT, str(Path.cwd()))
    return json.loads(Path(local).read_text())


def test_the_first_version_becomes_champion_and_a_worse_one_stays_challenger(mlflow_uri, trained):
    good, worse = trained
    first = register_table(mlflow_uri, good.bid_filter)
    run = tracking_client(mlflow_uri).get_model_version(BID_FILTER_MODEL, first).run_id
    promotion = apply_promotion(mlflow_uri, first, good.holdout, run, 0.99)
    assert promotion.decision.promote and champion_version(mlflow_uri) == "1"

    second = register_table(mlflow_uri, worse.bid_filter)
    second_run = tracking_client(mlflow_uri).get_model_version(BID_FILTER_MODEL, second).run_id
    promotion = apply_promotion(mlflow_uri, second, good.holdout, second_run, 0.99)

    assert not promotion.decision.promote
    assert version_by_alias(mlflow_uri, CHAMPION_ALIAS, BID_FILTER_MODEL) == "1"
    assert version_by_alias(mlflow_uri, CHALLENGER_ALIAS, BID_FILTER_MODEL) == "2"
    # Judged on the same holdout, each at its own threshold: the champion's figures are its training's.
    assert promotion.champion_metrics["shed_share"] == good.metrics["shed_share"]
    tags = tracking_client(mlflow_uri).get_run(second_run).data.tags
    assert tags["promotion.promoted"] == "false" and tags["promotion.champion_version_after"] == "1"
    report = _decision(mlflow_uri, second_run)
    assert report["registered_model"] == BID_FILTER_MODEL and report["promoted"] is False
    assert report["champion_version_before"] == "1" and report["challenger_version"] == "2"


def test_a_champion_losing_revenue_on_recent_traffic_is_replaced(mlflow_uri, trained):
    good, _ = trained
    # A champion whose threshold sheds nearly everything: it keeps far less than 99 % of the revenue.
    greedy = BidFilter(good.bid_filter.bias, good.bid_filter.weights, threshold=0.999)
    champion = register_table(mlflow_uri, greedy)
    tracking_client(mlflow_uri).set_registered_model_alias(BID_FILTER_MODEL, CHAMPION_ALIAS, champion)
    challenger = register_table(mlflow_uri, good.bid_filter)
    run = tracking_client(mlflow_uri).get_model_version(BID_FILTER_MODEL, challenger).run_id

    promotion = apply_promotion(mlflow_uri, challenger, good.holdout, run, 0.99)

    assert promotion.decision.promote and champion_version(mlflow_uri) == challenger
    assert promotion.champion_metrics["revenue_retained"] < 0.5
    assert "below 99.00%" in promotion.decision.reasons[-1]


def test_a_registered_version_loads_as_it_was_logged(mlflow_uri, trained):
    good, _ = trained
    version = register_table(mlflow_uri, good.bid_filter)
    loaded = load_bid_filter(mlflow_uri, version)
    assert loaded.to_json() == good.bid_filter.to_json()
