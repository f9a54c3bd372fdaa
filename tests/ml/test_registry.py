import json

import mlflow
import mlflow.sklearn
import pandas as pd
import pytest

from adstream.contracts import CHALLENGER_ALIAS, CHAMPION_ALIAS, MLFLOW_EXPERIMENT, REGISTERED_MODEL
from ml.features import FEATURES, LABEL
from ml.metrics import evaluate
from ml.pipelines import logistic_regression
from ml.registry import DECISION_ARTIFACT, apply_promotion, decide_promotion
from ml.split import time_split
from ml.tracking import tracking_client
from tests.ml.factories import training_frame
from tests.ml.registered import register

# --- the rule ---------------------------------------------------------------------------------


def test_with_no_champion_a_calibrated_challenger_is_promoted():
    decision = decide_promotion({"normalized_entropy": 0.7, "calibration": 1.05}, None)
    assert decision.promote
    assert decision.reasons == ["there is no champion yet"]


def test_with_no_champion_a_miscalibrated_challenger_is_not_promoted():
    decision = decide_promotion({"normalized_entropy": 0.7, "calibration": 1.25}, None)
    assert not decision.promote
    assert "calibration 1.2500 is outside [0.8, 1.2]" in decision.reasons[0]


def test_a_strictly_lower_ne_on_the_same_holdout_wins():
    decision = decide_promotion(
        {"normalized_entropy": 0.69, "calibration": 0.95}, {"normalized_entropy": 0.70, "calibration": 1.0}
    )
    assert decision.promote
    assert decision.reasons == ["challenger normalized entropy 0.690000 < champion's 0.700000 on the same holdout"]


@pytest.mark.parametrize("challenger_ne", [0.70, 0.71])
def test_an_equal_or_higher_ne_loses(challenger_ne):
    decision = decide_promotion(
        {"normalized_entropy": challenger_ne, "calibration": 1.0}, {"normalized_entropy": 0.70, "calibration": 1.0}
    )
    assert not decision.promote


@pytest.mark.parametrize("calibration", [0.79, 1.21, float("nan")])
def test_a_better_ne_does_not_excuse_calibration_outside_the_bounds(calibration):
    decision = decide_promotion(
        {"normalized_entropy": 0.5, "calibration": calibration}, {"normalized_entropy": 0.7, "calibration": 1.0}
    )
    assert not decision.promote
    assert any("calibration" in reason for reason in decision.reasons)


@pytest.mark.parametrize("calibration", [0.8, 1.2])
def test_the_calibration_bounds_are_inclusive(calibration):
    assert decide_promotion({"normalized_entropy": 0.5, "calibration": calibration}, None).promote


# --- applied to a real registry ----------------------------------------------------------------


@pytest.fixture(scope="module")
def split():
    return time_split(training_frame(600, seed=8))


@pytest.fixture(scope="module")
def models(split):
    """A strong model, a weak one, and the strong one shifted to over-predict clicks."""
    train, holdout = split
    features, labels = train[list(FEATURES)], train[LABEL].to_numpy()
    strong = logistic_regression().fit(features, labels)
    weak = logistic_regression(numeric=["hour_of_day"], categorical=["gender"]).fit(features, labels)
    over_predicting = logistic_regression().fit(features, labels)
    over_predicting.named_steps["classifier"].intercept_ += 2.0
    metrics = {
        name: evaluate(holdout[LABEL], m.predict_proba(holdout[list(FEATURES)])[:, 1])
        for name, m in {"strong": strong, "weak": weak, "over_predicting": over_predicting}.items()
    }
    # Preconditions of the scenarios below, checked rather than assumed.
    assert metrics["strong"]["normalized_entropy"] < 0.6 < 0.9 < metrics["weak"]["normalized_entropy"]
    assert metrics["over_predicting"]["calibration"] > 1.2
    assert metrics["over_predicting"]["normalized_entropy"] < metrics["weak"]["normalized_entropy"]
    return {"strong": strong, "weak": weak, "over_predicting": over_predicting}


def promote(uri: str, version: str, holdout: pd.DataFrame):
    """Applies the promotion, logging to a fresh run; returns (promotion, that run's tags, its decision file)."""
    client = tracking_client(uri)
    run_id = client.create_run(client.get_experiment_by_name(MLFLOW_EXPERIMENT).experiment_id).info.run_id
    promotion = apply_promotion(uri, version, holdout, run_id)
    tags = client.get_run(run_id).data.tags
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=DECISION_ARTIFACT, tracking_uri=uri)
    with open(path) as fh:
        return promotion, tags, json.load(fh)


def aliases(uri: str) -> dict[str, str]:
    return {alias: str(v) for alias, v in tracking_client(uri).get_registered_model(REGISTERED_MODEL).aliases.items()}


def test_the_first_version_becomes_champion_and_the_decision_is_logged(mlflow_uri, models, split):
    _, holdout = split
    version = register(mlflow_uri, models["strong"])
    assert aliases(mlflow_uri) == {CHALLENGER_ALIAS: "1"}
    promotion, tags, report = promote(mlflow_uri, version, holdout)
    assert promotion.decision.promote
    assert aliases(mlflow_uri) == {CHALLENGER_ALIAS: "1", CHAMPION_ALIAS: "1"}
    assert tags["promotion.promoted"] == "true"
    assert tags["promotion.reasons"] == "there is no champion yet"
    assert (tags["promotion.champion_version_before"], tags["promotion.champion_version_after"]) == ("none", "1")
    assert report["promoted"] is True and report["champion_metrics"] is None
    assert report["challenger_metrics"]["examples"] == 120  # 20 % of 600


def test_a_better_challenger_takes_the_champion_alias(mlflow_uri, models, split):
    _, holdout = split
    promote(mlflow_uri, register(mlflow_uri, models["weak"]), holdout)
    promotion, tags, report = promote(mlflow_uri, register(mlflow_uri, models["strong"]), holdout)
    assert promotion.decision.promote
    assert aliases(mlflow_uri) == {CHALLENGER_ALIAS: "2", CHAMPION_ALIAS: "2"}
    assert (tags["promotion.champion_version_before"], tags["promotion.champion_version_after"]) == ("1", "2")
    # The old champion was re-scored on this same holdout.
    assert report["champion_metrics"]["examples"] == report["challenger_metrics"]["examples"] == 120
    assert report["challenger_metrics"]["normalized_entropy"] < report["champion_metrics"]["normalized_entropy"]


def test_a_worse_challenger_leaves_the_champion_in_place(mlflow_uri, models, split):
    _, holdout = split
    promote(mlflow_uri, register(mlflow_uri, models["strong"]), holdout)
    promotion, tags, report = promote(mlflow_uri, register(mlflow_uri, models["weak"]), holdout)
    assert not promotion.decision.promote
    assert aliases(mlflow_uri) == {CHALLENGER_ALIAS: "2", CHAMPION_ALIAS: "1"}
    assert tags["promotion.promoted"] == "false"
    assert ">= champion's" in tags["promotion.reasons"]
    assert report["promoted"] is False and report["champion_version_after"] == "1"


def test_a_miscalibrated_challenger_is_not_promoted_even_with_a_better_ne(mlflow_uri, models, split):
    _, holdout = split
    promote(mlflow_uri, register(mlflow_uri, models["weak"]), holdout)
    promotion, tags, _ = promote(mlflow_uri, register(mlflow_uri, models["over_predicting"]), holdout)
    assert not promotion.decision.promote
    assert aliases(mlflow_uri)[CHAMPION_ALIAS] == "1"
    assert "outside [0.8, 1.2]" in tags["promotion.reasons"]
    assert "< champion's" in tags["promotion.reasons"]  # it did have the better NE
