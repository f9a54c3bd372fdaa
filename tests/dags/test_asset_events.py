"""Asset events name the Delta version a task wrote, and the DAG they trigger reads that version.

The consumer side runs ``dag.test()`` in a clean Airflow process (as `airflow dags test` does), on a run that
consumed one Asset event: what the scheduler hands an Asset-triggered run, without starting a scheduler.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from adstream.assets import table_asset
from adstream.contracts import DagId, Table
from adstream.settings import child_process_env
from cli.tasks import (
    DELTA_VERSION,
    ROW_COUNT,
    table_version_extra,
    triggering_table_version,
    triggering_table_versions,
)
from devstack import services
from tests.conftest import make_settings
from tests.dags.test_dags import _airflow, asset_events

RUN_ON_ASSET_EVENT = """
import json, sys
from unittest import mock

from sqlalchemy import select

from airflow.dag_processing.dagbag import DagBag
from airflow.models import dagrun
from airflow.models.asset import AssetEvent, AssetModel

dag_id, asset_name, extra = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
create_run = dagrun.get_or_create_dagrun


def run_that_consumed_the_event(*, session, **kwargs):
    run = create_run(session=session, **kwargs)
    asset = session.scalar(select(AssetModel).where(AssetModel.name == asset_name))
    event = AssetEvent(asset_id=asset.id, extra=extra, source_dag_id="feature_build", source_task_id="build_gold")
    session.add(event)
    run.consumed_asset_events.append(event)
    session.commit()
    return run


dag = DagBag().get_dag(dag_id)
with mock.patch.object(dagrun, "get_or_create_dagrun", run_that_consumed_the_event):
    run = dag.test()
print(json.dumps({"state": str(run.state)}))
"""


def run_on_asset_event(settings, dag_id: str, table: Table, *, version: int, rows: int) -> str:
    """Runs ``dag_id`` (``dag.test``) as an Asset event of ``table`` naming ``version`` would; its log, once it
    succeeded."""
    result = subprocess.run(
        [sys.executable, "-c", RUN_ON_ASSET_EVENT, dag_id, table.value, json.dumps({DELTA_VERSION: version,
                                                                                     ROW_COUNT: rows})],
        env=child_process_env(**services.airflow_env(settings)), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    # log lines (timestamped) may follow the run's state line on stdout
    assert '{"state": "success"}' in result.stdout.splitlines(), result.stdout[-5000:]
    return log


def event(version: int | None, minute: int) -> SimpleNamespace:
    extra = {} if version is None else {DELTA_VERSION: version, ROW_COUNT: 10}
    return SimpleNamespace(extra=extra, timestamp=datetime(2026, 12, 1, 10, minute, tzinfo=UTC))


def test_the_newest_triggering_event_names_the_version_and_a_run_without_one_reads_the_latest():
    training_set = table_asset(Table.GOLD_CTR_TRAINING_SET)
    events = {training_set: [event(4, 1), event(6, 3), event(5, 2), event(None, 4)]}
    assert triggering_table_version(events, Table.GOLD_CTR_TRAINING_SET) == 6
    assert triggering_table_version(events, Table.SILVER_AUCTIONS) is None
    assert triggering_table_version({}, Table.GOLD_CTR_TRAINING_SET) is None
    assert triggering_table_version({training_set: [event(None, 1)]}, Table.GOLD_CTR_TRAINING_SET) is None


def test_each_table_is_read_at_the_version_its_newest_event_names_and_the_others_at_their_latest(capsys):
    events = {
        table_asset(Table.BRONZE_ADVERTISING): [event(3, 1), event(2, 0)],
        table_asset(Table.BRONZE_ADS16_USERS): [event(None, 2)],
    }
    tables = [Table.BRONZE_ADVERTISING, Table.BRONZE_ADS16_USERS, Table.BRONZE_AMAZON_ADS]
    assert triggering_table_versions(events, tables) == {Table.BRONZE_ADVERTISING: 3}
    assert triggering_table_versions({}, tables) == {}  # an hourly or manual run
    log = capsys.readouterr().out
    assert "bronze/advertising version 3, named by the Asset event that triggered this run" in log
    assert "bronze/amazon_ads: no Asset event that triggered this run names a version; reading the latest" in log


def test_a_table_is_described_by_its_version_and_rows_and_a_missing_one_by_nothing(tmp_path):
    import pandas as pd
    from deltalake import write_deltalake

    location = str(tmp_path / "table")
    assert table_version_extra(location) == {}
    write_deltalake(location, pd.DataFrame({"x": range(7)}))
    write_deltalake(location, pd.DataFrame({"x": range(3)}), mode="append")
    assert table_version_extra(location) == {DELTA_VERSION: 1, ROW_COUNT: 10}


@pytest.mark.slow
def test_ctr_training_trains_on_the_version_its_asset_event_names_not_the_latest(tmp_path):
    from deltalake import write_deltalake

    from ml.tracking import tracking_client
    from ml.train import registering_runs
    from simulator.ctr_examples import training_frame

    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri)
    tracking_client(mlflow_uri).create_experiment("ctr", artifact_location=str(tmp_path / "artifacts"))
    location, _ = settings.delta_rs_location(Table.GOLD_CTR_TRAINING_SET)
    write_deltalake(location, training_frame(600, seed=3))  # version 0, the one the event names
    write_deltalake(location, training_frame(900, seed=4), mode="overwrite")  # version 1, the latest
    assert _airflow(settings, "db", "migrate").returncode == 0

    log = run_on_asset_event(settings, DagId.CTR_TRAINING, Table.GOLD_CTR_TRAINING_SET, version=0, rows=600)
    assert "gold/ctr_training_set version 0, named by the Asset event that triggered this run" in log

    (run,) = registering_runs(settings, max_results=5)
    params = run.data.params
    assert params["training_table_version"] == "0"
    assert int(params["train_rows"]) + int(params["holdout_rows"]) == 600


@pytest.mark.slow
def test_feature_build_builds_silver_from_the_bronze_version_its_asset_event_names_not_the_latest(tmp_path):
    from deltalake import DeltaTable

    from ingestion.pipeline import ingest
    from tests.spark_jobs.test_features import ADVERTISING_V1_ROWS, keep_first_advertising_rows

    settings = make_settings(
        tmp_path, kaggle_dir=services.PROJECT_ROOT / "data" / "kaggle", reports_dir=tmp_path / "reports",
        spark_master="local[2]", spark_shuffle_partitions=2,
    )  # fmt: skip
    for dataset in ("advertising", "ads16", "amazon"):
        ingest(settings, dataset)  # bronze/advertising version 0: 1000 rows
    assert keep_first_advertising_rows(settings) == 1  # version 1, the latest: 400 rows
    assert _airflow(settings, "db", "migrate").returncode == 0

    log = run_on_asset_event(settings, DagId.FEATURE_BUILD, Table.BRONZE_ADVERTISING, version=0, rows=1000)
    assert "bronze/advertising version 0, named by the Asset event that triggered this run" in log
    assert "bronze/ads16_users: no Asset event that triggered this run names a version; reading the latest" in log

    def rows(table: Table) -> list[dict]:
        return DeltaTable(settings.delta_rs_location(table)[0]).to_pyarrow_table().to_pylist()

    assert len(rows(Table.SILVER_USERS)) == 1000 + 24, f"not {ADVERTISING_V1_ROWS} + 24: the latest bronze"
    training = rows(Table.GOLD_CTR_TRAINING_SET)
    assert len([row for row in training if row["example_id"].startswith("adv:")]) == 1000
    assert {row["source"] for row in training} == {"bootstrap"}
    assert len(rows(Table.GOLD_USER_FEATURES)) == 1024
    # Each Asset event it publishes names the version the run left its table at (a fresh lake: the first) and
    # its rows, for the DAGs downstream to read that version.
    assert asset_events(settings.airflow_home, Table.GOLD_CTR_TRAINING_SET) == [
        {"delta_version": 0, "row_count": len(training)}
    ]
    assert asset_events(settings.airflow_home, Table.GOLD_USER_FEATURES) == [{"delta_version": 0, "row_count": 1024}]
    assert asset_events(settings.airflow_home, Table.SILVER_USERS) == [{"delta_version": 0, "row_count": 1024}]
