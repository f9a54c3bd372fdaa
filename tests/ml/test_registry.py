import json
from dataclasses import replace

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest

from adstream.contracts import CHALLENGER_ALIAS, CHAMPION_ALIAS, MLFLOW_EXPERIMENT, REGISTERED_MODEL
from ml.calibration import prior_correction
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
    assert tags["promotion.reasons"].startswith("there is no champion yet; judged on the whole holdout")
    assert tags["promotion.judged_on"] == "holdout"  # its logged part holds too few clicks to decide
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


# --- judged on logged traffic ------------------------------------------------------------------

LIVE_CTR = 0.03


@pytest.fixture(scope="module")
def holdout_with_logged_traffic(models, split):
    """The bootstrap holdout (about half clicks) plus 20,000 logged impressions whose true click
    probability is the strong model's score corrected to a 3 % stream (``ml.calibration``'s formula,
    written out here: odds scaled by odds(3 %) / odds(the training part's rate))."""
    train, holdout = split
    logged = training_frame(20_000, seed=31, start="2026-12-01", days=1).assign(source="logged")
    score = models["strong"].predict_proba(logged[list(FEATURES)])[:, 1]
    train_rate = train[LABEL].mean()
    w = (LIVE_CTR / (1 - LIVE_CTR)) / (train_rate / (1 - train_rate))
    truth = score * w / (score * w + 1 - score)
    labels = np.random.default_rng(32).uniform(size=len(logged)) < truth
    return pd.concat([holdout.assign(source="bootstrap"), logged.assign(label=labels.astype(int))])


def test_the_gate_refuses_a_challenger_calibrated_on_the_bootstrap_holdout_but_not_on_logged_traffic(
    mlflow_uri, models, split, holdout_with_logged_traffic
):
    train, _ = split
    holdout = holdout_with_logged_traffic
    uncalibrated = register(mlflow_uri, models["strong"])  # no calibration: it serves its raw score
    promotion, tags, report = promote(mlflow_uri, uncalibrated, holdout)
    assert not promotion.decision.promote
    assert tags["promotion.judged_on"] == "logged"
    # Fine where the data is half clicks ...
    assert 0.8 <= report["bootstrap_holdout"]["challenger"]["calibration"] <= 1.2
    # ... far too many clicks expected on the traffic it would serve (a confident model: scores near 0 or 1
    # keep their side after the correction, so the excess is about 1.8x rather than the ~16x of the rates).
    assert report["challenger_metrics"]["calibration"] > 1.5
    assert report["challenger_metrics"]["examples"] == 20_000
    assert "outside [0.9, 1.1]" in tags["promotion.reasons"] and "judged on logged traffic" in tags["promotion.reasons"]
    assert CHAMPION_ALIAS not in aliases(mlflow_uri)

    corrected = prior_correction("", float(train[LABEL].mean()), LIVE_CTR)
    calibrated = register(mlflow_uri, models["strong"], calibration=corrected)
    promotion, tags, report = promote(mlflow_uri, calibrated, holdout)
    assert promotion.decision.promote, tags["promotion.reasons"]
    assert 0.9 <= report["challenger_metrics"]["calibration"] <= 1.1
    assert report["calibration_bounds"] == [0.9, 1.1]


def test_on_logged_traffic_the_champion_is_judged_through_the_calibration_in_force(
    mlflow_uri, models, split, holdout_with_logged_traffic
):
    train, _ = split
    corrected = prior_correction("", float(train[LABEL].mean()), LIVE_CTR)
    champion = register(mlflow_uri, models["strong"], calibration=corrected)
    promote(mlflow_uri, champion, holdout_with_logged_traffic)
    weak = register(mlflow_uri, models["weak"], calibration=corrected)
    client = tracking_client(mlflow_uri)
    run_id = client.create_run(client.get_experiment_by_name(MLFLOW_EXPERIMENT).experiment_id).info.run_id
    in_force = []

    def champion_calibration(version):
        in_force.append(version)
        return replace(corrected, model_version=version)

    promotion = apply_promotion(mlflow_uri, weak, holdout_with_logged_traffic, run_id, champion_calibration)
    assert in_force == [champion]
    assert not promotion.decision.promote  # the weak model's NE on logged traffic is worse
    assert promotion.champion_metrics["normalized_entropy"] < promotion.challenger_metrics["normalized_entropy"]
