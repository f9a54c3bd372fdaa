"""`adstream train | promote | compare` on a real MLflow store: exit codes, messages, and what they leave there."""

import math
import re
import shutil
import time

import nbformat
import numpy as np
import pytest
from deltalake import write_deltalake

from adstream.contracts import CHALLENGER_ALIAS, CHAMPION_ALIAS, Table
from ml.compare import NOTEBOOK
from ml.registry import version_by_alias
from ml.tracking import tracking_client
from ml.train import train_challenger
from tests.cli.conftest import invoke
from tests.conftest import free_port, make_settings
from tests.ml.conftest import forget_fluent_uris, new_store
from tests.ml.factories import training_frame
from tests.ml.test_compare import FAMILY_NAMES, NO_RUNS, NOT_BETTER

# --- train ---


def test_train_reports_an_unreachable_server_and_exits_1(tmp_path):
    settings = make_settings(tmp_path, mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")
    result = invoke(settings, ["train"])
    assert result.exit_code == 1
    assert "MLFLOW_TRACKING_URI" in result.stderr


def test_train_reports_a_missing_training_table_and_exits_1(mlflow_uri, tmp_path):
    settings = make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri)
    result = invoke(settings, ["train", "--training-table", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert "no Delta table at" in result.stderr


def test_train_refuses_an_unknown_dataset_before_training(table_settings):
    result = invoke(table_settings, ["train", "--dataset", "advertising"])
    assert result.exit_code == 1
    assert "lacks required column(s): 'dataset'" in result.stderr


def test_metrics_are_logged_per_dataset_and_a_one_dataset_run_registers_nothing(mlflow_uri, tmp_path):
    settings = make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri)
    frame = training_frame(500, seed=8)
    frame["dataset"] = np.where(np.arange(len(frame)) % 5 == 0, "ads16", "advertising")
    location = settings.delta_rs_location(Table.GOLD_CTR_TRAINING_SET)[0]
    write_deltalake(location, frame)

    mixed = train_challenger(settings)
    mixed_metrics = tracking_client(mlflow_uri).get_run(mixed["training_run"]).data.metrics
    assert {"logistic_regression.advertising.roc_auc", "logistic_regression.ads16.roc_auc"} <= set(mixed_metrics)

    result = invoke(settings, ["train", "--dataset", "advertising"])
    assert result.exit_code == 0, result.output
    assert "evaluation only" in result.stdout
    assert version_by_alias(mlflow_uri, CHALLENGER_ALIAS) == "1"  # the mixed run's; the filtered run added none
    client = tracking_client(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("ctr").experiment_id])
    (parent,) = [
        run
        for run in runs
        if run.data.params.get("dataset_filter") == "advertising" and "mlflow.parentRunId" not in run.data.tags
    ]
    assert parent.data.params["dataset_filter"] == "advertising"
    # 400 advertising rows; the latest 20 % of each source's held out
    advertising = frame[frame["dataset"] == "advertising"]
    held_out = sum(math.ceil(0.2 * count) for count in advertising["source"].value_counts())
    assert parent.data.params["train_rows"] == str(400 - held_out)
    assert parent.data.metrics["logistic_regression.advertising.roc_auc"] == pytest.approx(
        parent.data.metrics["logistic_regression.roc_auc"]
    )
    assert "logistic_regression.ads16.roc_auc" not in parent.data.metrics


# --- promote ---


def test_a_registered_challenger_waits_for_the_promotion_step(table_settings):
    uri = table_settings.mlflow_tracking_uri
    assert invoke(table_settings, ["train", "--skip-promotion"]).exit_code == 0
    assert version_by_alias(uri, CHALLENGER_ALIAS) == "1"
    assert version_by_alias(uri, CHAMPION_ALIAS) is None

    promoted = invoke(table_settings, ["promote"])
    assert promoted.exit_code == 0, promoted.output
    assert version_by_alias(uri, CHAMPION_ALIAS) == "1"
    assert "version 1: promoted to champion (there is no champion yet; judged on the whole holdout" in promoted.stdout


def test_promotion_without_any_training_run_is_a_clear_failure(mlflow_uri, tmp_path):
    result = invoke(make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri), ["promote"])
    assert result.exit_code == 1
    assert "no training run with a registered version" in result.stderr


# --- compare ---


def test_compare_prints_families_decisions_and_the_registry(two_trainings):
    result = invoke(two_trainings.settings, ["compare", "--last", "2"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for expected in [*FAMILY_NAMES, "constant_ctr", "there is no champion yet", ">= champion's", "not promoted"]:
        assert expected in out
    assert two_trainings.first.parent_run_id in out and two_trainings.second.parent_run_id in out
    assert "executed notebook" not in out


@pytest.mark.parametrize("with_experiment", [True, False], ids=["empty experiment", "no experiment"])
def test_no_training_runs_yet_is_one_clear_line_and_exit_1(tmp_path, mlflow_db_template, with_experiment):
    if with_experiment:
        uri = new_store(tmp_path, mlflow_db_template)
    else:
        shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = invoke(make_settings(tmp_path, mlflow_tracking_uri=uri), ["compare"])
    assert result.exit_code == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("run comparison failed")]
    assert line.endswith(NO_RUNS)


def test_compare_names_mlflow_tracking_uri_when_the_server_is_unreachable(tmp_path):
    settings = make_settings(tmp_path, mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")
    began = time.monotonic()
    result = invoke(settings, ["compare"])
    assert result.exit_code == 1
    assert time.monotonic() - began < 5
    assert "MLFLOW_TRACKING_URI" in result.stderr


def test_compare_refuses_fewer_than_one_run(tmp_path):
    result = invoke(make_settings(tmp_path), ["compare", "--last", "0"])
    assert result.exit_code == 2 and "--last must be at least 1" in result.stderr


@pytest.mark.slow
def test_the_notebook_executes_against_the_store(two_trainings, monkeypatch):
    settings = two_trainings.settings
    forget_fluent_uris(monkeypatch)  # the kernel must get the URI from the settings, not from a leftover variable
    result = invoke(settings, ["compare", "--execute-notebook", "--last", "1"])
    assert result.exit_code == 0, result.output
    target = settings.reports_dir / "notebooks" / NOTEBOOK.name
    assert f"executed notebook written to {target}" in result.stdout
    executed = nbformat.read(target, as_version=4)
    code = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code)
    outputs = [output for cell in code for output in cell.outputs]
    assert [output for output in outputs if output.output_type == "error"] == []
    text = "\n".join(output.get("data", {}).get("text/plain", "") for output in outputs)
    assert re.search(rf"champion\s+1\s+{two_trainings.first.best_family}", text)
    assert re.search(rf"challenger\s+2\s+{two_trainings.second.best_family}", text)
    assert NOT_BETTER.search(text)
    # --last 1 reached the kernel: the first training (and its reason) is not in the tables.
    assert "there is no champion yet" not in text
    assert any("image/png" in output.get("data", {}) for output in outputs)
