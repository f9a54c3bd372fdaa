"""Train, then promote as a separate step (the two tasks of DAG ctr_training), on a real MLflow store."""

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


def test_retraining_on_the_same_table_does_not_displace_the_champion(table_settings):
    uri = table_settings.mlflow_tracking_uri
    first = train.train_challenger(table_settings)
    assert promote.decide_promotion(table_settings, first["training_run"])["promoted"] is True
    second = train.train_challenger(table_settings, force=True)
    assert (first["model_version"], second["model_version"]) == ("1", "2")
    assert version_by_alias(uri, CHALLENGER_ALIAS) == "2"

    decision = promote.decide_promotion(table_settings, None)  # the latest training run is the second
    # Same table version, same seeds: the challenger's NE equals the champion's, and only a strictly
    # lower NE promotes.
    assert decision["training_run"] == second["training_run"]
    assert decision["promoted"] is False and decision["champion_version"] == "1"
    assert ">=" in decision["reasons"][0]
    tags = tracking_client(uri).get_run(second["training_run"]).data.tags
    assert tags["promotion.promoted"] == "false" and tags["promotion.champion_version_after"] == "1"


def test_a_table_version_already_trained_is_not_trained_again(table_settings, capsys):
    first = train.train_challenger(table_settings)
    again = train.train_challenger(table_settings)
    assert again == {"trained": False, "training_run": first["training_run"], "training_table_version": 0}
    assert "version 0 was already trained" in capsys.readouterr().out
    decision = promote.promote_after_training(table_settings, again)
    assert decision["promoted"] is False and decision["reasons"] == ["nothing new was trained"]
    assert version_by_alias(table_settings.mlflow_tracking_uri, CHAMPION_ALIAS) is None
