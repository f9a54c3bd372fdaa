import json
import math
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.models import Model

from adstream.contracts import CHAMPION_ALIAS, MLFLOW_EXPERIMENT, REGISTERED_MODEL, Table
from ml.calibration import CALIBRATION_ARTIFACT, Calibration, CalibrationKind
from ml.features import FEATURES, MissingFeatureError
from ml.registry import DECISION_ARTIFACT
from ml.tracking import TrackingServerUnreachable, tracking_client
from ml.train import TrainingSetError, load_training_set, train
from tests.conftest import free_port, make_settings
from tests.ml.factories import training_frame

FAMILY_NAMES = {"logistic_regression", "gradient_boosted_trees", "trees_plus_lr"}


def runs_of(uri: str) -> list:
    client = tracking_client(uri)
    experiment = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
    return client.search_runs([experiment.experiment_id])


def registered_versions(uri: str) -> list:
    return tracking_client(uri).search_model_versions(f"name='{REGISTERED_MODEL}'")


def test_the_training_set_is_read_with_its_delta_version(trained):
    settings, frame = trained
    loaded, version = load_training_set(*settings.delta_rs_location(Table.GOLD_CTR_TRAINING_SET))
    assert version == 1
    assert sorted(loaded["example_id"]) == sorted(frame["example_id"])


def test_end_to_end_leaves_a_champion_and_one_run_per_family(trained):
    settings, frame = trained
    uri = settings.mlflow_tracking_uri
    client = tracking_client(uri)
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS)
    # The latest 20 % of each source is held out (none of the sources shares a timestamp).
    holdout_rows = sum(math.ceil(0.2 * count) for count in frame["source"].value_counts())
    assert str(champion.version) == "1"
    runs = runs_of(uri)
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {run.data.tags["model_family"] for run in children} == FAMILY_NAMES
    for run in children:
        params = run.data.params
        assert params["training_table_version"] == "1"
        assert (params["train_rows"], params["holdout_rows"]) == (str(600 - holdout_rows), str(holdout_rows))
        calibration = Calibration.from_json(
            Path(mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path=CALIBRATION_ARTIFACT, tracking_uri=uri
            )).read_text()
        )  # fmt: skip
        assert calibration.kind in (CalibrationKind.PRIOR, CalibrationKind.PLATT)
        assert params["model_family"] == run.data.tags["model_family"]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/roc_curve.png", "plots/calibration.png", "plots/feature_importance.png"} <= artifacts
        importance_path = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="feature_importance.json", tracking_uri=uri
        )
        with open(importance_path) as fh:
            assert {"age", "daily_time_spent_on_site", "device_type"} <= set(json.load(fh))
    # The registered version is the best family's model, logged by that family's run.
    best = parent.data.tags["best_family"]
    assert champion.run_id == next(run.info.run_id for run in children if run.data.tags["model_family"] == best)
    assert parent.data.tags["promotion.promoted"] == "true"
    path = mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id, artifact_path=DECISION_ARTIFACT, tracking_uri=uri
    )
    with open(path) as fh:
        assert json.load(fh)["champion_version_after"] == "1"


def test_the_registered_model_carries_a_signature_and_an_input_example(trained, tmp_path):
    settings, _ = trained
    uri = settings.mlflow_tracking_uri
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{REGISTERED_MODEL}@{CHAMPION_ALIAS}",
        dst_path=str(tmp_path),
        tracking_uri=uri,
        registry_uri=uri,
    )
    model = Model.load(local)
    inputs = {spec.name: spec.type.name for spec in model.get_input_schema().inputs}
    assert inputs["hour_of_day"] == "long" and inputs["age"] == "double" and inputs["country"] == "string"
    assert set(inputs) == set(FEATURES)
    example = json.loads((Path(local) / model.saved_input_example_info["artifact_path"]).read_text())
    assert example["columns"][:2] == ["age", "daily_time_spent_on_site"] and len(example["data"]) == 5
    assert model.flavors["sklearn"]["serialization_format"] == "skops"


def inputs_by_context(run) -> dict:
    """A run's input datasets by the context they were logged with (training, evaluation)."""
    return {
        next(tag.value for tag in dataset_input.tags if tag.key == "mlflow.data.context"): dataset_input.dataset
        for dataset_input in run.inputs.dataset_inputs
    }


def test_every_run_and_the_registered_version_name_the_delta_table_version_they_read(trained):
    settings, frame = trained
    uri = settings.mlflow_tracking_uri
    location, _ = settings.delta_rs_location(Table.GOLD_CTR_TRAINING_SET)
    holdout_rows = sum(math.ceil(0.2 * count) for count in frame["source"].value_counts())
    runs = runs_of(uri)
    assert len(runs) == 1 + len(FAMILY_NAMES)
    for run in runs:
        inputs = inputs_by_context(run)
        assert set(inputs) == {"training", "evaluation"}, run.data.tags
        for dataset in inputs.values():
            assert dataset.name == "gold/ctr_training_set" and dataset.source_type == "delta_table"
            assert json.loads(dataset.source) == {"path": location, "delta_table_version": 1}
        rows = {context: json.loads(dataset.profile)["num_rows"] for context, dataset in inputs.items()}
        assert rows == {"training": 600 - holdout_rows, "evaluation": holdout_rows}
    client = tracking_client(uri)
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS)
    training = inputs_by_context(client.get_run(champion.run_id))["training"]
    assert json.loads(training.source)["delta_table_version"] == 1


def test_the_logged_model_carries_its_holdout_metrics_on_the_holdout_dataset(trained):
    from sklearn.metrics import roc_auc_score

    from ml.split import split_per_source

    settings, frame = trained
    uri = settings.mlflow_tracking_uri
    client = tracking_client(uri)
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS)
    (output,) = client.get_run(champion.run_id).outputs.model_outputs  # the logged model the version holds
    logged_model = client.get_logged_model(output.model_id)
    assert champion.source == logged_model.model_uri
    metrics = {metric.key: metric for metric in logged_model.metrics}
    assert {"roc_auc", "log_loss", "normalized_entropy", "calibration"} <= set(metrics)
    holdout = inputs_by_context(client.get_run(champion.run_id))["evaluation"]
    assert {(m.dataset_name, m.dataset_digest) for m in metrics.values()} == {(holdout.name, holdout.digest)}
    assert {m.run_id for m in metrics.values()} == {champion.run_id}
    # The model's ROC AUC is this model's, on the holdout: recomputed from its own predictions.
    _, holdout_frame = split_per_source(frame, 0.2)
    model = mlflow.sklearn.load_model(logged_model.model_uri)
    pctr = model.predict_proba(holdout_frame[list(FEATURES)])[:, 1]
    assert metrics["roc_auc"].value == pytest.approx(roc_auc_score(holdout_frame["label"], pctr))


def test_the_champion_is_compared_with_a_constant_ctr_and_plain_logistic_regression(trained):
    settings, _ = trained
    (parent,) = [run for run in runs_of(settings.mlflow_tracking_uri) if "mlflow.parentRunId" not in run.data.tags]
    metrics = parent.data.metrics
    assert metrics["constant_ctr.normalized_entropy"] == pytest.approx(1.0, abs=0.05)
    assert metrics["logistic_regression.normalized_entropy"] < 0.8
    assert metrics["champion.normalized_entropy"] <= metrics["logistic_regression.normalized_entropy"]
    assert metrics["champion.ne_minus_constant_ctr"] < -0.2
    assert metrics["logistic_regression.roc_auc"] >= 0.95


def test_an_empty_training_set_is_refused_and_nothing_is_registered(mlflow_uri, tmp_path):
    settings = make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri)
    with pytest.raises(TrainingSetError, match="empty"):
        train(settings, training_frame(10).head(0), table_version=0)
    assert registered_versions(mlflow_uri) == [] and runs_of(mlflow_uri) == []


def test_a_single_class_training_set_is_refused_and_nothing_is_registered(mlflow_uri, tmp_path):
    settings = make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri)
    with pytest.raises(TrainingSetError, match=r"single class \(label 0: 200 rows\)"):
        train(settings, training_frame(200).assign(label=0), table_version=3)
    assert registered_versions(mlflow_uri) == [] and runs_of(mlflow_uri) == []


def test_a_holdout_without_clicks_is_refused_too(mlflow_uri, tmp_path):
    settings = make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri)
    frame = training_frame(200)
    for source in frame["source"].unique():  # the latest 20 % of each source never click
        rows = frame.index[frame["source"] == source]
        frame.loc[rows[-math.ceil(0.2 * len(rows)) :], "label"] = 0
    with pytest.raises(TrainingSetError, match="holdout"):
        train(settings, frame, table_version=3)
    assert registered_versions(mlflow_uri) == []


def test_a_renamed_feature_column_fails_before_training_naming_it(mlflow_uri, tmp_path):
    settings = make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri)
    frame = training_frame(200).rename(columns={"ad_category": "ad_category_name"})
    with pytest.raises(MissingFeatureError, match=r"'ad_category' \(renamed to 'ad_category_name'\?\)"):
        train(settings, frame, table_version=3)
    assert runs_of(mlflow_uri) == []


def test_an_unreachable_tracking_server_fails_fast_naming_mlflow_tracking_uri(tmp_path):
    settings = make_settings(tmp_path, mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")
    began = time.monotonic()
    with pytest.raises(TrackingServerUnreachable, match="MLFLOW_TRACKING_URI"):
        train(settings, training_frame(200), table_version=3)
    assert time.monotonic() - began < 5
