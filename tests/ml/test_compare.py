import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import mlflow
import nbformat
import pytest

from adstream.contracts import MLFLOW_EXPERIMENT, REGISTERED_MODEL
from adstream.settings import Settings
from ml.compare import NOTEBOOK, Comparison, compare_runs, training_runs
from ml.notebooks import KERNEL_NAME, VenvKernelManager
from ml.tracking import tracking_client
from ml.train import TrainResult, train
from tests.conftest import make_settings
from tests.ml.conftest import forget_fluent_uris, new_store, one_openmp_thread
from tests.ml.factories import training_frame

FAMILY_NAMES = {"logistic_regression", "gradient_boosted_trees", "trees_plus_lr"}
ROWS, TRAIN_ROWS, HOLDOUT_ROWS = 300, 240, 60  # ml.train holds out the latest 20 %
NO_RUNS = "run `adstream train` or trigger DAG ctr_training first"
NOT_BETTER = re.compile(r"challenger normalized entropy [\d.]+ >= champion's [\d.]+ on the same holdout")


@dataclass(frozen=True)
class TwoTrainings:
    settings: Settings
    first: TrainResult  # training table version 7: the first champion
    second: TrainResult  # version 8, identical data: its challenger cannot beat the champion


@pytest.fixture(scope="module")
def two_trainings(tmp_path_factory: pytest.TempPathFactory, mlflow_db_template) -> Iterator[TwoTrainings]:
    workdir = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as monkeypatch, one_openmp_thread():
        monkeypatch.chdir(workdir)
        forget_fluent_uris(monkeypatch)
        settings = make_settings(
            workdir, mlflow_tracking_uri=new_store(workdir, mlflow_db_template), reports_dir=workdir / "reports"
        )
        frame = training_frame(ROWS, seed=5)
        first = train(settings, frame, table_version=7)
        # The same data again: the same holdout NE, which is not strictly lower, so no promotion.
        second = train(settings, frame, table_version=8)
        yield TwoTrainings(settings, first, second)
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


@pytest.fixture(scope="module")
def comparison(two_trainings: TwoTrainings) -> Comparison:
    return compare_runs(two_trainings.settings.mlflow_tracking_uri)


def test_training_runs_are_the_parent_runs_newest_first(two_trainings):
    client = tracking_client(two_trainings.settings.mlflow_tracking_uri)
    newest, oldest = two_trainings.second.parent_run_id, two_trainings.first.parent_run_id
    assert [run.info.run_id for run in training_runs(client)] == [newest, oldest]
    assert [run.info.run_id for run in training_runs(client, last=1)] == [newest]


def test_families_sit_side_by_side_with_the_constant_ctr_baseline(two_trainings, comparison):
    frame = comparison.families
    data = training_frame(ROWS, seed=5)  # in time order
    assert len(frame) == 2 * (len(FAMILY_NAMES) + 1)
    for training, table_version, registered in ((two_trainings.second, "8", "2"), (two_trainings.first, "7", "1")):
        rows = frame[frame["training_run"] == training.parent_run_id].set_index("family")
        assert set(rows.index) == FAMILY_NAMES | {"constant_ctr"}
        assert (rows["training_table_version"] == table_version).all()
        assert (rows["train_rows"] == TRAIN_ROWS).all() and (rows["holdout_rows"] == HOLDOUT_ROWS).all()
        assert rows["train_time_range"].str.startswith(data["event_time"].iloc[0].isoformat()).all()
        assert rows["holdout_time_range"].str.endswith(data["event_time"].iloc[-1].isoformat()).all()
        assert rows["train_sources"].str.contains("bootstrap=").all()
        assert rows.index[rows["best"]].tolist() == [training.best_family]
        assert rows.loc[training.best_family, "registered_version"] == registered
        assert rows.drop(index=training.best_family)["registered_version"].isna().all()
        for family, run in training.runs.items():
            assert rows.loc[family, "run_id"] == run.run_id
            for metric in ("normalized_entropy", "log_loss", "roc_auc", "pr_auc", "calibration"):
                assert rows.loc[family, metric] == run.metrics[metric]
        # Any constant prediction loses at least the holdout's own entropy: NE >= 1.
        assert rows.loc["constant_ctr", "normalized_entropy"] >= 1.0
        assert rows.loc["constant_ctr", "run_id"] == training.parent_run_id
    # Newest training first, and within it the best family first.
    assert frame["training_run"].iloc[0] == two_trainings.second.parent_run_id
    assert frame["family"].iloc[0] == two_trainings.second.best_family
    # Identical data, deterministic families: every family scores the same NE in both trainings.
    by_run = frame.pivot(index="family", columns="training_run", values="normalized_entropy")
    assert (by_run.nunique(axis=1) == 1).all()


def test_the_decisions_show_the_first_champion_and_the_challenger_that_did_not_beat_it(two_trainings, comparison):
    decisions = comparison.decisions
    newest, oldest = two_trainings.second.parent_run_id, two_trainings.first.parent_run_id
    assert decisions["training_run"].tolist() == [newest, oldest]
    first = decisions.set_index("training_run").loc[oldest]
    second = decisions.set_index("training_run").loc[newest]
    columns = ["decision", "promoted", "challenger_version", "champion_before", "champion_after"]
    assert first[columns].tolist() == ["promoted", True, "1", None, "1"]
    assert "there is no champion yet" in first["reasons"]
    assert second[columns].tolist() == ["not promoted", False, "2", "1", "1"]
    assert NOT_BETTER.search(second["reasons"])
    assert (first["training_table_version"], second["training_table_version"]) == ("7", "8")


def test_the_registry_state_names_champion_and_challenger_with_their_runs(two_trainings, comparison):
    registry = comparison.registry.set_index("alias")
    for alias, training, version in (("champion", two_trainings.first, "1"), ("challenger", two_trainings.second, "2")):
        entry = registry.loc[alias]
        assert entry["version"] == version
        assert entry["family"] == training.best_family
        assert entry["run_id"] == training.runs[training.best_family].run_id
        assert entry["training_run"] == training.parent_run_id


def test_undecided_and_unfinished_training_runs(mlflow_uri):
    client = tracking_client(mlflow_uri)
    experiment_id = client.get_experiment_by_name(MLFLOW_EXPERIMENT).experiment_id
    evaluation = client.create_run(experiment_id, run_name="ctr-training")
    client.set_terminated(evaluation.info.run_id)
    registered = client.create_run(experiment_id, run_name="ctr-training")
    family = client.create_run(
        experiment_id,
        run_name="logistic_regression",
        tags={"mlflow.parentRunId": registered.info.run_id, "model_family": "logistic_regression"},
    )
    client.create_registered_model(REGISTERED_MODEL)
    client.create_model_version(REGISTERED_MODEL, f"runs:/{family.info.run_id}/model", family.info.run_id)
    for run in (family, registered):
        client.set_terminated(run.info.run_id)
    client.create_run(experiment_id, run_name="ctr-training")  # still running: left out

    comparison = compare_runs(mlflow_uri)
    decisions = comparison.decisions.set_index("training_run")
    assert list(decisions.index) == [registered.info.run_id, evaluation.info.run_id]
    assert decisions.loc[registered.info.run_id, "decision"] == "awaiting promotion"
    assert decisions.loc[registered.info.run_id, "challenger_version"] == "1"
    assert decisions.loc[evaluation.info.run_id, "decision"] == "nothing registered"
    assert decisions["promoted"].isna().all()
    assert comparison.registry["version"].isna().all()  # no alias set


def test_the_stored_notebook_is_valid_and_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


def test_notebook_kernels_run_on_this_venvs_interpreter():
    # A user-level python3 kernelspec (~/.local/share/jupyter) must not pick another Python.
    assert VenvKernelManager(kernel_name=KERNEL_NAME).kernel_spec.argv[0] == sys.executable
