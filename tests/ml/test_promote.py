"""Train, then promote as a separate step (the two tasks of DAG ctr_training), on a real MLflow store."""

import numpy as np
import pytest
from deltalake import write_deltalake

from adstream.contracts import CHALLENGER_ALIAS, CHAMPION_ALIAS, Table
from ml import promote, train
from ml.registry import version_by_alias
from ml.tracking import tracking_client
from tests.conftest import make_settings
from tests.ml.factories import training_frame


@pytest.fixture
def table_settings(mlflow_uri, tmp_path):
    settings = make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri)
    write_deltalake(settings.delta_rs_location(Table.GOLD_CTR_TRAINING_SET)[0], training_frame(400, seed=5))
    return settings


def test_a_registered_challenger_waits_for_the_promotion_step(table_settings, capsys):
    uri = table_settings.mlflow_tracking_uri
    assert train.main(["--skip-promotion"], settings=table_settings) == 0
    assert version_by_alias(uri, CHALLENGER_ALIAS) == "1"
    assert version_by_alias(uri, CHAMPION_ALIAS) is None

    assert promote.main([], settings=table_settings) == 0
    assert version_by_alias(uri, CHAMPION_ALIAS) == "1"
    assert "version 1: promoted to champion (there is no champion yet)" in capsys.readouterr().out


def test_retraining_on_the_same_table_does_not_displace_the_champion(table_settings):
    uri = table_settings.mlflow_tracking_uri
    first = train.train_task(table_settings)
    assert promote.promote_task(first["training_run"], table_settings)["promoted"] is True
    second = train.train_task(table_settings, force=True)
    assert (first["model_version"], second["model_version"]) == ("1", "2")
    assert version_by_alias(uri, CHALLENGER_ALIAS) == "2"

    decision = promote.promote_task(None, table_settings)  # the latest training run is the second
    # Same table version, same seeds: the challenger's NE equals the champion's, and only a strictly
    # lower NE promotes.
    assert decision["training_run"] == second["training_run"]
    assert decision["promoted"] is False and decision["champion_version"] == "1"
    assert ">=" in decision["reasons"][0]
    tags = tracking_client(uri).get_run(second["training_run"]).data.tags
    assert tags["promotion.promoted"] == "false" and tags["promotion.champion_version_after"] == "1"


def test_a_table_version_already_trained_is_not_trained_again(table_settings, capsys):
    first = train.train_task(table_settings)
    again = train.train_task(table_settings)
    assert again == {"trained": False, "training_run": first["training_run"], "training_table_version": 0}
    assert "version 0 was already trained" in capsys.readouterr().out
    decision = promote.promote_after_training(again, table_settings)
    assert decision["promoted"] is False and decision["reasons"] == ["nothing new was trained"]
    assert version_by_alias(table_settings.mlflow_tracking_uri, CHAMPION_ALIAS) is None


def test_promotion_without_any_training_run_is_a_clear_failure(mlflow_uri, tmp_path, capsys):
    assert promote.main([], settings=make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri)) == 1
    assert "no training run with a registered version" in capsys.readouterr().err


def test_metrics_are_logged_per_dataset_and_a_one_dataset_run_registers_nothing(mlflow_uri, tmp_path, capsys):
    settings = make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri)
    frame = training_frame(500, seed=8)
    frame["dataset"] = np.where(np.arange(len(frame)) % 5 == 0, "ads16", "advertising")
    location = settings.delta_rs_location(Table.GOLD_CTR_TRAINING_SET)[0]
    write_deltalake(location, frame)

    mixed = train.train_task(settings)
    mixed_metrics = tracking_client(mlflow_uri).get_run(mixed["training_run"]).data.metrics
    assert {"logistic_regression.advertising.roc_auc", "logistic_regression.ads16.roc_auc"} <= set(mixed_metrics)

    assert train.main(["--dataset", "advertising"], settings=settings) == 0
    out = capsys.readouterr().out
    assert "evaluation only" in out
    assert version_by_alias(mlflow_uri, CHALLENGER_ALIAS) == "1"  # the mixed run's; the filtered run added none
    client = tracking_client(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("ctr").experiment_id])
    (parent,) = [
        run
        for run in runs
        if run.data.params.get("dataset_filter") == "advertising" and "mlflow.parentRunId" not in run.data.tags
    ]
    assert parent.data.params["dataset_filter"] == "advertising"
    assert parent.data.params["train_rows"] == "320"  # 400 advertising rows, latest 20 % held out
    assert parent.data.metrics["logistic_regression.advertising.roc_auc"] == pytest.approx(
        parent.data.metrics["logistic_regression.roc_auc"]
    )
    assert "logistic_regression.ads16.roc_auc" not in parent.data.metrics


def test_an_unknown_dataset_is_refused_before_training(table_settings, capsys):
    assert train.main(["--dataset", "advertising"], settings=table_settings) == 1
    assert "lacks required column(s): 'dataset'" in capsys.readouterr().err
