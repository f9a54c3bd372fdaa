"""Real Airflow: the DAG folder parses cleanly, and `airflow dags test` runs the smoke DAG end to end."""

import json
import sqlite3
import subprocess
import sys

import pytest
from deltalake import DeltaTable

from adstream.contracts import BID_FILTER_EXPERIMENT, DagId, Table
from adstream.settings import child_process_env
from devstack import services
from tests.conftest import make_settings

PARSE_DAG_FOLDER = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag()
tasks = {
    dag_id: {task.task_id: sorted(outlet.name for outlet in task.outlets) for task in dag.tasks}
    for dag_id, dag in bag.dags.items()
}
def scheduled_on(dag):
    condition = getattr(dag.timetable, "asset_condition", None)
    return sorted(asset.name for asset in getattr(condition, "objects", []))
schedules = {dag_id: scheduled_on(dag) for dag_id, dag in bag.dags.items()}
def seconds(delay):
    return None if delay is None else delay.total_seconds()
retries = {
    f"{dag_id}.{task.task_id}": {"retries": task.retries, "retry_delay_s": seconds(task.retry_delay),
                                 "retry_exponential_backoff": task.retry_exponential_backoff,
                                 "max_retry_delay_s": seconds(task.max_retry_delay)}
    for dag_id, dag in bag.dags.items() for task in dag.tasks
}
# The scheduler's own answer, for a DAG just unpaused with no run yet: when its first scheduled run starts.
from datetime import UTC, datetime
from airflow.serialization.serialized_objects import LazyDeserializedDAG
now = datetime.now(UTC)
def first_run_in_s(dag):
    info = LazyDeserializedDAG.from_dag(dag).next_dagrun_info(last_automated_run_info=None)
    return None if info is None or info.run_after is None else (info.run_after - now).total_seconds()
first_runs = {dag_id: first_run_in_s(dag) for dag_id, dag in bag.dags.items() if not dag.catchup}
print(json.dumps({"dag_ids": sorted(bag.dag_ids), "import_errors": bag.import_errors, "tasks": tasks,
                  "schedules": schedules, "retries": retries, "first_runs": first_runs}))
"""

# Tasks a retry would not repeat harmlessly, and why; every other task retries with backoff.
NOT_IDEMPOTENT = {
    "platform_smoke.produce_events": "a second attempt sends the run's events to Kafka again",
}


@pytest.fixture
def airflow_settings(kafka_settings, tmp_path):
    return kafka_settings.model_copy(update={"lake_root": str(tmp_path / "lake"), "local_dir": tmp_path / "local"})


def _airflow(settings, *args: str) -> subprocess.CompletedProcess[str]:
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(services.VENV_BIN / "airflow"), *args],
        env=child_process_env(**services.airflow_env(settings)),
        capture_output=True,
        text=True,
        timeout=600,
    )


def parse_dag_folder(settings, dag_folder) -> dict:
    """DagBag's view of ``dag_folder``, parsed in a clean Airflow process as the dag-processor would."""
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    env = child_process_env(**{**services.airflow_env(settings), "AIRFLOW__CORE__DAGS_FOLDER": str(dag_folder)})
    result = subprocess.run(
        [sys.executable, "-c", PARSE_DAG_FOLDER], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def parsed_dags(tmp_path_factory) -> dict:
    return parse_dag_folder(make_settings(tmp_path_factory.mktemp("dagbag")), services.PROJECT_ROOT / "dags")


def asset_events(airflow_home, asset_name: str) -> list[dict]:
    """The extras of the events Airflow recorded for ``asset_name``, oldest first (read from its metadata DB)."""
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        rows = db.execute(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = ? ORDER BY e.id",
            (asset_name,),
        ).fetchall()
    return [json.loads(extra) for (extra,) in rows]


def test_dag_folder_has_no_import_errors(parsed_dags):
    parsed = parsed_dags
    assert parsed["import_errors"] == {}
    assert DagId.PLATFORM_SMOKE in parsed["dag_ids"]
    assert parsed["tasks"][DagId.KAGGLE_INGESTION] == {
        "advertising.load_bronze": ["bronze/advertising"],
        "ads16.load_bronze": ["bronze/ads16_ads", "bronze/ads16_ratings", "bronze/ads16_users"],
        "amazon.load_bronze": ["bronze/amazon_ads"],
    }
    assert parsed["tasks"][DagId.CTR_TRAINING] == {"train_and_register": [], "promote_challenger": ["ctr-model"]}
    assert parsed["schedules"][DagId.CTR_TRAINING] == ["gold/ctr_training_set"]
    assert parsed["tasks"][DagId.BID_FILTER_TRAINING] == {
        "train_and_register": [], "promote_challenger": ["bid-filter"],
    }  # fmt: skip
    assert parsed["schedules"][DagId.BID_FILTER_TRAINING] == ["silver/auctions"]
    assert parsed["tasks"][DagId.HOURLY_BILLING] == {
        "bill": ["gold/billing_hourly", "gold/exchange_costs_hourly"], "reconcile": [], "export": [],
    }  # fmt: skip
    assert parsed["tasks"][DagId.LAKE_MAINTENANCE] == {"compact_and_vacuum": []}
    assert parsed["schedules"][DagId.FEATURE_BUILD] == [
        "bronze/ads16_ads", "bronze/ads16_ratings", "bronze/ads16_users", "bronze/advertising", "bronze/amazon_ads",
    ]  # fmt: skip


def test_unpausing_a_scheduled_dag_starts_no_catch_up_run(parsed_dags):
    # A catch-up run at unpause would rebuild bronze and features beside the run `make run` triggers.
    first_runs = parsed_dags["first_runs"]
    for dag_id, period_s in (
        (DagId.KAGGLE_INGESTION, 86_400), (DagId.FEATURE_BUILD, 3_600),
        (DagId.BID_FILTER_TRAINING, 3_600), (DagId.LAKE_MAINTENANCE, 6 * 3_600),
    ):  # fmt: skip
        assert first_runs[dag_id] is not None, f"{dag_id} has no scheduled run"
        assert 0 < first_runs[dag_id] <= period_s, f"{dag_id}: its first scheduled run is {first_runs[dag_id]} s away"
    assert first_runs[DagId.CTR_TRAINING] is None  # Assets alone
    assert first_runs[DagId.PLATFORM_SMOKE] is None  # triggered only


def test_every_idempotent_task_retries_with_backoff_and_the_others_do_not_retry(parsed_dags):
    retries = parsed_dags["retries"]
    assert len(retries) >= 15 and set(NOT_IDEMPOTENT) <= set(retries)
    for task, settings in retries.items():
        if task in NOT_IDEMPOTENT:
            assert settings["retries"] == 0, f"{task} is not idempotent ({NOT_IDEMPOTENT[task]}) but retries"
            continue
        assert settings["retries"] >= 2, f"{task} does not retry: {settings}"
        assert 10 <= settings["retry_delay_s"] <= 120, f"{task}: {settings}"
        assert settings["retry_exponential_backoff"] >= 2, f"{task} retries without backoff: {settings}"
        assert settings["retry_delay_s"] < settings["max_retry_delay_s"] <= 3600, f"{task}: {settings}"


def test_a_broken_dag_file_is_reported(tmp_path):
    broken = tmp_path / "dags"
    broken.mkdir()
    (broken / "broken_dag.py").write_text("from airflow.sdk import dag\nimport adstream.no_such_module\n")
    parsed = parse_dag_folder(make_settings(tmp_path), broken)
    assert list(parsed["import_errors"]) == [str(broken / "broken_dag.py")]
    assert "no_such_module" in next(iter(parsed["import_errors"].values()))


def test_dag_files_do_no_heavy_imports_at_top_level():
    dag_folder = services.PROJECT_ROOT / "dags"
    for dag_file in dag_folder.glob("*.py"):
        top_level = [line for line in dag_file.read_text().splitlines() if line.startswith(("import ", "from "))]
        heavy = [line for line in top_level if any(m in line for m in ("pyspark", "mlflow", "sklearn", "pandas"))]
        assert heavy == [], f"{dag_file.name} imports {heavy} at parse time"


@pytest.mark.slow
def test_airflow_dags_test_runs_the_smoke_dag(airflow_settings, spark):
    migrate = _airflow(airflow_settings, "db", "migrate")
    assert migrate.returncode == 0, migrate.stderr[-3000:]

    result = _airflow(airflow_settings, "dags", "test", DagId.PLATFORM_SMOKE)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    assert "state=success" in log, log[-5000:]

    table = spark.read.format("delta").load(airflow_settings.lake_path(Table.SMOKE_EVENTS))
    smoke_runs = table.where(table.run_id.startswith("manual__")).groupBy("run_id").count().collect()
    assert [row["count"] for row in smoke_runs] == [100]


@pytest.mark.slow
def test_airflow_dags_test_ingests_the_committed_samples(tmp_path):
    settings = make_settings(
        tmp_path, kaggle_dir=services.PROJECT_ROOT / "data" / "kaggle", reports_dir=tmp_path / "reports"
    )
    assert _airflow(settings, "db", "migrate").returncode == 0
    result = _airflow(settings, "dags", "test", DagId.KAGGLE_INGESTION)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    assert "state=success" in log, log[-5000:]
    counts = {
        table: len(DeltaTable(settings.delta_rs_location(table)[0]).to_pyarrow_table())
        for table in (Table.BRONZE_ADVERTISING, Table.BRONZE_ADS16_USERS, Table.BRONZE_AMAZON_ADS)
    }
    assert counts == {Table.BRONZE_ADVERTISING: 1000, Table.BRONZE_ADS16_USERS: 24, Table.BRONZE_AMAZON_ADS: 11521}
    assert (tmp_path / "reports" / "quality" / "amazon_ads" / "latest.json").exists()


@pytest.mark.slow
def test_airflow_dags_test_trains_and_leaves_a_champion(tmp_path):
    from deltalake import write_deltalake

    from ml.registry import version_by_alias
    from ml.tracking import tracking_client
    from simulator.ctr_examples import training_frame

    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri)
    tracking_client(mlflow_uri).create_experiment("ctr", artifact_location=str(tmp_path / "artifacts"))
    write_deltalake(settings.delta_rs_location(Table.GOLD_CTR_TRAINING_SET)[0], training_frame(600, seed=3))
    assert _airflow(settings, "db", "migrate").returncode == 0
    result = _airflow(settings, "dags", "test", DagId.CTR_TRAINING)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    assert "state=success" in log, log[-5000:]
    assert version_by_alias(mlflow_uri, "champion") == "1"
    assert "promoted to champion (there is no champion yet; judged on the whole holdout" in log


@pytest.mark.slow
def test_airflow_dags_test_trains_a_bid_filter_and_leaves_a_champion(tmp_path):
    from ml.bid_filter_registry import champion_version
    from ml.tracking import tracking_client
    from tests.ml.auction_logs import synthetic_auction_log, write_auction_log

    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri)
    tracking_client(mlflow_uri).create_experiment(BID_FILTER_EXPERIMENT, artifact_location=str(tmp_path / "artifacts"))
    write_auction_log(settings.delta_rs_location(Table.SILVER_AUCTIONS)[0], synthetic_auction_log(5_000, seed=9))
    assert _airflow(settings, "db", "migrate").returncode == 0
    result = _airflow(settings, "dags", "test", DagId.BID_FILTER_TRAINING)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    assert "state=success" in log, log[-5000:]
    assert champion_version(mlflow_uri) == "1"
    assert "bid-filter version 1: promoted to champion (challenger keeps" in log


@pytest.mark.slow
def test_airflow_dags_test_bills_the_hour_before_the_run(tmp_path):
    from tests.spark_jobs.billing.data import AUCTIONS, HOUR_10, LATE, write_silver

    # No campaign store here: the bill's budget columns stay empty and the ledger side is skipped.
    settings = make_settings(
        tmp_path, reports_dir=tmp_path / "reports", spark_master="local[2]", spark_shuffle_partitions=2
    )
    write_silver(settings, HOUR_10 + LATE, auctions=list(AUCTIONS))
    assert _airflow(settings, "db", "migrate").returncode == 0
    result = _airflow(settings, "dags", "test", DagId.HOURLY_BILLING, "2026-11-24T11:00:00+00:00")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    assert "state=success" in log, log[-5000:]
    bill = DeltaTable(settings.delta_rs_location(Table.GOLD_BILLING_HOURLY)[0]).to_pandas()
    assert dict(zip(bill["campaign_id"], bill["spend_micros"], strict=True)) == {
        "cmp-cpm": 3_705, "cmp-cpc": 930_000, "cmp-cpa": 5_000_000,
    }  # fmt: skip
    assert set(bill["hour"].astype(str)) == {"2026-11-24 10:00:00+00:00"}
    assert set(bill["status"]) == {"final"} and bill["budget_total_micros"].isna().all()
    written = DeltaTable(settings.delta_rs_location(Table.GOLD_BILLING_HOURLY)[0]).version()
    assert asset_events(settings.airflow_home, Table.GOLD_BILLING_HOURLY) == [
        {"delta_version": written, "row_count": 3}
    ]
    # The hour's media cost per exchange: written (no OpenRTB win in this hour), and announced as well.
    assert asset_events(settings.airflow_home, Table.GOLD_EXCHANGE_COSTS_HOURLY) == [
        {"delta_version": 0, "row_count": 0}
    ]
    exported = tmp_path / "reports" / "billing" / "2026-11-24"
    assert {path.name for path in exported.iterdir()} == {"10.csv", "10.html", "10.reconciliation.json", "finance.html"}
    reconciliation = json.loads((exported / "10.reconciliation.json").read_text())
    assert reconciliation["checked"] == ["bill", "auction log"] and reconciliation["mismatches"] == []
    assert "no campaign store" in reconciliation["skipped"]["ledger"]
