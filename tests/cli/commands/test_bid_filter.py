"""`adstream bid-filter train | promote` on a real MLflow store and a real Delta auction log."""

from adstream.contracts import BID_FILTER_MODEL, CHALLENGER_ALIAS, CHAMPION_ALIAS
from ml.bid_filter_training import auction_log_location
from ml.registry import version_by_alias
from tests.cli.conftest import invoke
from tests.conftest import free_port, make_settings
from tests.ml.auction_logs import synthetic_auction_log, write_auction_log


def test_train_registers_and_promotes_the_first_filter(mlflow_uri, tmp_path):
    settings = make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri)
    write_auction_log(auction_log_location(settings)[0], synthetic_auction_log(5_000, seed=6))
    result = invoke(settings, ["bid-filter", "train"])
    assert result.exit_code == 0, result.output
    assert "4000 requests to fit, 1000 in the holdout" in result.stdout
    assert "registered as bid-filter version 1 (challenger)" in result.stdout
    assert "bid-filter version 1: promoted to champion" in result.stdout
    assert version_by_alias(mlflow_uri, CHAMPION_ALIAS, BID_FILTER_MODEL) == "1"


def test_train_on_a_named_log_then_promote_on_its_own(mlflow_uri, tmp_path):
    settings = make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri)
    location = str(tmp_path / "elsewhere")
    write_auction_log(location, synthetic_auction_log(5_000, seed=6))
    trained = invoke(settings, ["bid-filter", "train", "--auction-log", location, "--skip-promotion"])
    assert trained.exit_code == 0, trained.output
    assert "promoted" not in trained.stdout
    assert version_by_alias(mlflow_uri, CHALLENGER_ALIAS, BID_FILTER_MODEL) == "1"
    assert version_by_alias(mlflow_uri, CHAMPION_ALIAS, BID_FILTER_MODEL) is None

    promoted = invoke(settings, ["bid-filter", "promote"])
    assert promoted.exit_code == 0, promoted.output
    assert "promoted to champion" in promoted.stdout and "there is no champion yet" in promoted.stdout
    assert version_by_alias(mlflow_uri, CHAMPION_ALIAS, BID_FILTER_MODEL) == "1"


def test_train_without_an_auction_log_exits_1(mlflow_uri, tmp_path):
    result = invoke(make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri), ["bid-filter", "train"])
    assert result.exit_code == 1
    assert "bid filter training failed: no Delta table at" in result.stderr


def test_train_reports_an_unreachable_server_and_exits_1(tmp_path):
    settings = make_settings(tmp_path, mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")
    result = invoke(settings, ["bid-filter", "train"])
    assert result.exit_code == 1
    assert "MLFLOW_TRACKING_URI" in result.stderr


def test_promote_without_a_training_run_exits_1(mlflow_uri, tmp_path):
    result = invoke(make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri), ["bid-filter", "promote"])
    assert result.exit_code == 1
    assert "bid filter promotion failed: no training run" in result.stderr
