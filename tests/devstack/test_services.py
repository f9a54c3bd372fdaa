"""The local service manager behind `make up` / `make down` / `make status`."""

import dataclasses
import os
import socket
import sys
import time
import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from devstack import services
from tests.conftest import free_port, make_settings


def test_kraft_config_binds_both_listeners_on_the_configured_ports(tmp_path):
    settings = make_settings(tmp_path, kafka_port=19092, kafka_controller_port=19093)
    props = dict(
        line.split("=", 1)
        for line in services.kafka_server_properties(settings, tmp_path / "data").splitlines()
        if line
    )
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["transaction.state.log.replication.factor"] == "1"


def test_a_taken_port_is_named_with_the_variable_that_moves_it(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        settings = make_settings(tmp_path, mlflow_port=taken)
        (mlflow_service,) = services.build_services(settings, ["mlflow"])
        with pytest.raises(services.ServiceError, match=rf"port {taken} .*MLFLOW_PORT=<port>"):
            services.start(settings, mlflow_service)
    assert services.running_pid(settings, "mlflow") is None


def test_a_cluster_id_never_starts_like_an_option(monkeypatch):
    # 0xF8 encodes to "-" first in URL-safe base64; kafka-storage would read "-t -..." as two options.
    drawn = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" * 16)])
    monkeypatch.setattr(services.uuid, "uuid4", lambda: next(drawn))
    assert services.kafka_cluster_id() == "AQEBAQEBAQEBAQEBAQEBAQ"


def test_batch_services_run_below_the_request_path(tmp_path):
    settings = make_settings(tmp_path)
    niceness = {service.name: service.niceness for service in services.build_services(settings, [])}
    assert niceness == {
        "kafka": 0,
        "shared-store": 0,
        "mlflow": 0,
        "airflow": 10,
        "ad-manager": 0,
        "auction": 0,
        "streaming": 10,
        "calibrator": 10,
        "optimizer": 0,  # decisions reach serving within seconds: not below the request path
        "dashboard": 10,  # a viewer: below the request path
    }
    idle = services.Service(
        name="idle", url="-", ports=(), command=(sys.executable, "-c", "import time; time.sleep(60)"),
        healthy=lambda: True, niceness=10,
    )  # fmt: skip
    pid = services.start(settings, idle)
    try:
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
        autogroup = Path(f"/proc/{pid}/autogroup")  # its session's share against other sessions
        if autogroup.exists():
            assert autogroup.read_text().split()[-2:] == ["nice", "10"]
    finally:
        assert services.stop(settings, idle) == "stopped"


def test_a_service_that_came_up_while_its_wave_waited_for_a_slower_one_is_healthy_past_its_timeout(tmp_path):
    # `up` waits for a wave's services one after another, each timeout counted from the wave's start: one
    # waited for after a slower one must still be checked, not failed unseen.
    settings = make_settings(tmp_path)
    sleeper = services.Service(
        name="sleeper", url="-", ports=(), command=(sys.executable, "-c", "import time; time.sleep(30)"),
        healthy=lambda: True, start_timeout_s=1.0,
    )  # fmt: skip
    never = dataclasses.replace(sleeper, name="never", healthy=lambda: False)
    try:
        for service in (sleeper, never):
            services.start(settings, service)
        wave_began = time.monotonic() - 5.0  # the slower services of the wave took 5 s
        assert services.wait_healthy(settings, sleeper, wave_began) >= 5.0
        with pytest.raises(services.ServiceError, match="never was not healthy after 1s"):
            services.wait_healthy(settings, never, wave_began)
    finally:
        for service in (sleeper, never):
            services.stop(settings, service)
    assert services.running_pid(settings, "sleeper") is None and services.running_pid(settings, "never") is None


def test_unknown_service_names_are_refused(tmp_path):
    with pytest.raises(services.ServiceError, match="unknown service"):
        services.build_services(make_settings(tmp_path), ["zookeeper"])


def test_airflow_points_at_the_project_dags_and_settings(tmp_path):
    settings = make_settings(tmp_path, airflow_port=18080)
    env = services.airflow_env(settings)
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(services.PROJECT_ROOT / "dags")
    assert env["AIRFLOW__API__PORT"] == "18080"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert env["LAKE_ROOT"] == str(tmp_path / "lake")
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == settings.kafka_bootstrap_servers


@pytest.mark.slow
def test_mlflow_server_starts_once_serves_runs_and_stops_completely(tmp_path, capsys):
    port = free_port()
    settings = make_settings(tmp_path, mlflow_port=port, mlflow_tracking_uri=f"http://127.0.0.1:{port}")
    (server,) = services.build_services(settings, ["mlflow"])
    try:
        services.up(settings, ["mlflow"])
        pid = services.running_pid(settings, "mlflow")
        assert pid is not None
        services.up(settings, ["mlflow"])  # a second `up` is harmless
        assert services.running_pid(settings, "mlflow") == pid
        assert "already running" in capsys.readouterr().out

        client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
        experiment_id = client.create_experiment("services-test")
        run = client.create_run(experiment_id)
        client.log_metric(run.info.run_id, "roc_auc", 0.91)
        client.set_terminated(run.info.run_id)
        assert client.get_run(run.info.run_id).data.metrics == {"roc_auc": 0.91}
        assert services.status(settings, ["mlflow"]) == 0
    finally:
        assert services.stop(settings, server) == "stopped"
    assert services.running_pid(settings, "mlflow") is None
    assert not services._group_alive(pid)
    assert not services.port_in_use("127.0.0.1", port)
    assert services.status(settings, ["mlflow"]) == 1
    assert (settings.log_dir / "mlflow.log").exists()
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_up_brings_the_whole_stack_to_healthy_and_down_leaves_nothing_running(tmp_path, capsys):
    settings = make_settings(tmp_path)
    ports = [
        settings.kafka_port,
        settings.kafka_controller_port,
        settings.mlflow_port,
        settings.airflow_port,
        settings.airflow_worker_log_port,
        settings.airflow_trigger_log_port,
        settings.auction_port,
    ]
    services.airflow_cli(settings, "db", "migrate", capture_output=True)
    try:
        services.up(settings)
        assert services.status(settings) == 0
        pids = {name: services.running_pid(settings, name) for name in services.SERVICE_FACTORIES}
        assert all(pids.values()), pids
    finally:
        services.down(settings)
    out = capsys.readouterr().out
    everything = len(services.SERVICE_FACTORIES)  # Kafka, MLflow, Airflow, the ad manager, the auction service
    assert out.count("started") >= everything and out.count("stopped") == everything
    assert not any(services._group_alive(pid) for pid in pids.values())
    assert not any(services.port_in_use("127.0.0.1", port) for port in ports)
    assert services.status(settings) == everything
    # A second `down` has nothing to do and says so.
    services.down(settings)
    assert capsys.readouterr().out.count("not running") == everything
