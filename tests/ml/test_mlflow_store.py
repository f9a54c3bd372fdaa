"""A run logged to a real MLflow store (SQLite backend, local artifacts), and the registry aliases."""

import json

import mlflow
from mlflow.tracking import MlflowClient

from adstream.contracts import CHAMPION_ALIAS, MLFLOW_EXPERIMENT, REGISTERED_MODEL


def test_a_run_round_trips_params_metrics_artifacts_and_aliases(tmp_path):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment_id = client.create_experiment(MLFLOW_EXPERIMENT, artifact_location=str(tmp_path / "artifacts"))

    run = client.create_run(experiment_id, tags={"model_family": "logistic_regression"})
    run_id = run.info.run_id
    client.log_param(run_id, "training_table_version", "7")
    for step, loss in enumerate([0.52, 0.47, 0.45]):
        client.log_metric(run_id, "log_loss", loss, step=step)
    report = tmp_path / "decision.json"
    report.write_text(json.dumps({"promoted": False, "reason": "baseline"}))
    client.log_artifact(run_id, str(report))
    client.set_terminated(run_id)

    client.create_registered_model(REGISTERED_MODEL)
    version = client.create_model_version(REGISTERED_MODEL, source=f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version.version)

    # Read everything back through a fresh client, as another process would.
    reader = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    stored = reader.get_run(run_id)
    assert stored.info.status == "FINISHED"
    assert stored.data.params == {"training_table_version": "7"}
    assert stored.data.metrics == {"log_loss": 0.45}
    assert [m.value for m in reader.get_metric_history(run_id, "log_loss")] == [0.52, 0.47, 0.45]
    assert stored.data.tags["model_family"] == "logistic_regression"
    downloaded = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="decision.json", dst_path=str(tmp_path / "dl"), tracking_uri=tracking_uri
    )
    with open(downloaded) as fh:
        assert json.load(fh) == {"promoted": False, "reason": "baseline"}
    champion = reader.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS)
    assert (str(champion.version), champion.run_id) == ("1", run_id)
