"""The Airflow REST client `make run` drives DAGs with: the parts that are ours (reading a run as the official
client parses it, finding the run an Asset event queued), and its calls against a real Airflow API server."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from airflow_client.client.models import DAGRunResponse

from adstream.contracts import DagId
from adstream.settings import Settings, child_process_env
from devstack import services
from devstack.airflow_client import AirflowClient, AirflowRunFailed, DagRun, admin_password, first_run_after
from tests.conftest import make_settings

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def api_run(run_id: str, queued_at: str | None, state: str = "queued", **extra: str | None) -> DAGRunResponse:
    """A run as the official client parses the API's JSON."""
    return DAGRunResponse.from_dict({
        "dag_id": "feature_build", "dag_display_name": "feature_build", "dag_run_id": run_id, "state": state,
        "run_type": extra.get("run_type", "asset_triggered"), "run_after": "2026-11-24T10:00:00Z", "dag_versions": [],
        "queued_at": queued_at, "start_date": extra.get("start"), "end_date": extra.get("end"),
    })  # fmt: skip


def test_a_run_is_read_from_the_api_with_its_duration():
    run = DagRun.from_api(api_run("r1", "2026-11-24T10:00:00Z", "success",
                                  start="2026-11-24T10:00:05Z", end="2026-11-24T10:01:35.5Z"))  # fmt: skip
    assert run.queued_at == T0 and run.state == "success"
    assert run.seconds == 90.5
    assert DagRun.from_api(api_run("r2", None)).seconds is None


def test_the_run_an_asset_event_queued_is_the_first_at_or_after_the_upstream_run():
    runs = [
        DagRun.from_api(api_run("older", "2026-11-24T09:59:59Z")),
        DagRun.from_api(api_run("later", "2026-11-24T10:05:00Z")),
        DagRun.from_api(api_run("first", "2026-11-24T10:00:00Z")),
        DagRun.from_api(api_run("unqueued", None)),
    ]
    assert first_run_after(runs, T0).run_id == "first"
    assert first_run_after(runs, datetime(2026, 11, 24, 11, tzinfo=UTC)) is None
    cron_tick = DagRun.from_api(api_run("cron", "2026-11-24T10:00:00Z", run_type="scheduled"))
    assert first_run_after([cron_tick, *runs], T0, "asset_triggered").run_id == "first"


def test_a_missing_password_file_says_to_start_airflow(tmp_path):
    with pytest.raises(AirflowRunFailed, match="make up"):
        admin_password(tmp_path)
    (tmp_path / "simple_auth_manager_passwords.json.generated").write_text('{"admin": "s3cret"}')
    assert admin_password(tmp_path) == "s3cret"


@pytest.fixture(scope="module")
def airflow_api(tmp_path_factory) -> Iterator[Settings]:
    """A real Airflow API server (no scheduler) on a free port, its database holding the project's DAGs."""
    settings = make_settings(tmp_path_factory.mktemp("airflow-api"))
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    env = child_process_env(**services.airflow_env(settings))
    for step in (["db", "migrate"], ["dags", "reserialize"]):
        done = subprocess.run([str(services.VENV_BIN / "airflow"), *step], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    log = (settings.airflow_home / "api-server.log").open("w")
    server = subprocess.Popen(
        [str(services.VENV_BIN / "airflow"), "api-server", "--port", str(settings.airflow_port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not (settings.airflow_home / "simple_auth_manager_passwords.json.generated").exists() or not _healthy(
            settings
        ):
            assert server.poll() is None and time.monotonic() < deadline, settings.airflow_home / "api-server.log"
            time.sleep(1.0)
        yield settings
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


def _healthy(settings: Settings) -> bool:
    try:
        return httpx.get(f"http://{settings.bind_host}:{settings.airflow_port}/api/v2/monitor/health").is_success
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_the_official_client_drives_a_real_airflow(airflow_api):
    client = AirflowClient(airflow_api, timeout_s=10.0)
    try:
        client.wait_for_dags([DagId.PLATFORM_SMOKE], timeout_s=30)
        with pytest.raises(AirflowRunFailed, match="no_such_dag"):
            client.wait_for_dags(["no_such_dag"], timeout_s=0)
        client.unpause(DagId.PLATFORM_SMOKE)
        before = datetime.now(UTC) - timedelta(seconds=1)
        triggered = client.trigger(DagId.PLATFORM_SMOKE, {"reason": "test"})
        assert triggered.dag_id == DagId.PLATFORM_SMOKE and triggered.run_type == "manual"
        assert triggered.state == "queued" and triggered.queued_at >= before
        assert first_run_after(client.runs(DagId.PLATFORM_SMOKE), before, "manual") == triggered
        assert client.run(DagId.PLATFORM_SMOKE, triggered.run_id) == triggered
        # No scheduler here: the run stays queued, and waiting for it says so once its time is up.
        with pytest.raises(AirflowRunFailed, match="did not finish within 2s"):
            client.wait_for_run(DagId.PLATFORM_SMOKE, run_id=triggered.run_id, timeout_s=2, progress=lambda _: None)
    finally:
        client.close()
