"""Training on silver/auctions (real Delta, real MLflow store): the two steps of DAG bid_filter_training."""

import json
from datetime import timedelta

import pytest

from adstream.contracts import BID_FILTER_EXPERIMENT, BID_FILTER_MODEL, CHALLENGER_ALIAS, CHAMPION_ALIAS, Table
from ml import bid_filter_training
from ml.bid_filter_registry import ARTIFACT_DIR, ARTIFACT_FILE, MODEL_FAMILY
from ml.registry import version_by_alias
from ml.tracking import tracking_client
from tests.conftest import make_settings
from tests.ml.auction_logs import synthetic_auction_log, write_auction_log
from tests.ml.test_train import inputs_by_context


@pytest.fixture
def log_settings(mlflow_uri, tmp_path):
    """Settings whose silver/auctions holds 6,000 synthetic requests over three days (two Delta versions)."""
    settings = make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri)
    log = synthetic_auction_log(6_000, seed=4)
    location = bid_filter_training.auction_log_location(settings)[0]
    write_auction_log(location, log.head(3_000))
    write_auction_log(location, log.tail(3_000))
    return settings


def test_the_log_is_read_over_the_days_up_to_its_newest_request(tmp_path):
    location = str(tmp_path / "auctions")
    log = synthetic_auction_log(1_000, seed=2, days=10)
    write_auction_log(location, log)
    frame, version = bid_filter_training.load_auction_log(location, days=3)
    newest = log["event_time"].max()
    assert version == 0
    within = log["event_time"] > newest - timedelta(days=3)
    assert frame["request_id"].tolist() == log.loc[within, "request_id"].tolist()
    assert frame["event_time"].min() > newest - timedelta(days=3) and frame["event_time"].max() == newest
    assert "fillable" not in frame  # only the columns the filter reads


def test_training_logs_the_run_registers_a_challenger_and_promotion_makes_it_champion(log_settings):
    uri = log_settings.mlflow_tracking_uri
    training = bid_filter_training.train_challenger(log_settings)
    assert training["trained"] is True and training["model_version"] == "1"
    assert training["auction_log_version"] == 1
    assert version_by_alias(uri, CHALLENGER_ALIAS, BID_FILTER_MODEL) == "1"
    assert version_by_alias(uri, CHAMPION_ALIAS, BID_FILTER_MODEL) is None

    client = tracking_client(uri)
    run = client.get_run(training["training_run"])
    assert client.get_experiment(run.info.experiment_id).name == BID_FILTER_EXPERIMENT
    assert run.data.params["auction_log_version"] == "1"
    assert run.data.params["holdout_requests"] == "1200"
    assert run.data.metrics["holdout.revenue_retained"] >= 0.99
    assert run.data.metrics["holdout.no_fill_shed_share"] >= 0.8
    assert 0.5 < run.data.metrics["holdout.roc_auc"] <= 1
    inputs = inputs_by_context(run)
    assert set(inputs) == {"training", "evaluation"}
    for dataset in inputs.values():
        assert dataset.name == Table.SILVER_AUCTIONS.value
        assert '"delta_table_version": 1' in dataset.source
    assert json.loads(inputs["evaluation"].profile)["num_rows"] == 1200
    assert f"{ARTIFACT_DIR}/{ARTIFACT_FILE}" in [a.path for a in client.list_artifacts(run.info.run_id, ARTIFACT_DIR)]
    # The holdout figures are on the run's logged model too, judged on the holdout dataset.
    logged = client.get_logged_model(training["logged_model"])
    assert logged.source_run_id == run.info.run_id and logged.model_type == MODEL_FAMILY
    holdout_metrics = {key: value for key, value in run.data.metrics.items() if key.startswith("holdout.")}
    assert len(holdout_metrics) >= 5
    assert {metric.key: metric.value for metric in logged.metrics} == holdout_metrics
    evaluation = inputs["evaluation"]
    assert {(metric.dataset_name, metric.dataset_digest) for metric in logged.metrics} == {
        (evaluation.name, evaluation.digest)
    }

    decision = bid_filter_training.promote_after_training(log_settings, training)
    assert decision["promoted"] is True and decision["champion_version"] == "1"
    assert version_by_alias(uri, CHAMPION_ALIAS, BID_FILTER_MODEL) == "1"


def test_the_version_an_asset_event_names_is_trained_on_rather_than_the_latest(log_settings):
    training = bid_filter_training.train_challenger(log_settings, table_version=0)
    assert training["trained"] is True and training["auction_log_version"] == 0
    run = tracking_client(log_settings.mlflow_tracking_uri).get_run(training["training_run"])
    assert run.data.params["auction_log_version"] == "0"
    assert run.data.params["holdout_requests"] == "600"  # a fifth of version 0's 3,000 requests
    assert all('"delta_table_version": 0' in dataset.source for dataset in inputs_by_context(run).values())


def test_a_table_version_already_trained_is_not_trained_again(log_settings, capsys):
    first = bid_filter_training.train_challenger(log_settings)
    again = bid_filter_training.train_challenger(log_settings)
    assert again == {"trained": False, "training_run": first["training_run"], "auction_log_version": 1}
    assert "version 1 was already trained" in capsys.readouterr().out
    decision = bid_filter_training.promote_after_training(log_settings, again)
    assert decision == {"training_run": first["training_run"], "promoted": False,
                        "reasons": ["nothing new was trained"]}  # fmt: skip
    forced = bid_filter_training.train_challenger(log_settings, force=True)
    assert forced["trained"] is True and forced["model_version"] == "2"


def test_retraining_on_the_same_log_sheds_as_much_and_is_promoted(log_settings):
    first = bid_filter_training.train_challenger(log_settings)
    bid_filter_training.promote_after_training(log_settings, first)
    second = bid_filter_training.train_challenger(log_settings, force=True)
    decision = bid_filter_training.decide_promotion(log_settings)  # the latest training run: the second
    assert decision["training_run"] == second["training_run"]
    assert decision["promoted"] is True and decision["champion_version"] == "2"
    assert "sheds" in decision["reasons"][-1] and ">=" in decision["reasons"][-1]


def test_a_log_too_small_to_train_is_reported_and_registers_nothing(mlflow_uri, tmp_path, capsys):
    settings = make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri)
    write_auction_log(bid_filter_training.auction_log_location(settings)[0], synthetic_auction_log(300, seed=1))
    training = bid_filter_training.train_challenger(settings)
    assert training["trained"] is False and "300 OpenRTB requests, fewer than 1000" in training["reason"]
    assert "no bid filter trained" in capsys.readouterr().out
    assert version_by_alias(mlflow_uri, CHALLENGER_ALIAS, BID_FILTER_MODEL) is None


def test_without_an_auction_log_nothing_is_trained(mlflow_uri, tmp_path):
    training = bid_filter_training.train_challenger(make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri))
    assert training["trained"] is False and "no Delta table at" in training["reason"]


def test_promotion_without_a_training_run_says_so(mlflow_uri, tmp_path):
    with pytest.raises(bid_filter_training.NoTrainingRun, match="adstream bid-filter train"):
        bid_filter_training.decide_promotion(make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri))
