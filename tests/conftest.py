"""Shared fixtures: one real Kafka broker and one Spark session per test run.

The broker is started from the jar cache `make setup` fills, on free ports in a
temporary directory, and stopped (its whole process group) when the run ends.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from adstream.settings import Settings
from devstack import services

# The jar cache `make setup` filled (JAR_CACHE_DIR, default .local/jars).
JAR_CACHE = Path(Settings().jar_cache_dir).resolve()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_settings(tmp: Path, **overrides: object) -> Settings:
    """Settings isolated in ``tmp``, sharing the project's jar cache."""
    values: dict[str, object] = {
        "lake_root": str(tmp / "lake"),
        "local_dir": tmp / "local",
        "reports_dir": tmp / "reports",
        "jar_cache_dir": JAR_CACHE,
        "mlflow_tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "kafka_port": free_port(),
        "kafka_controller_port": free_port(),
        "mlflow_port": free_port(),
        "airflow_port": free_port(),
        "airflow_worker_log_port": free_port(),
        "airflow_trigger_log_port": free_port(),
        "auction_port": free_port(),  # so a running `make up` on 8000 cannot collide with a test
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def kafka_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings whose KAFKA_BOOTSTRAP_SERVERS is a live single-node KRaft broker."""
    settings = make_settings(tmp_path_factory.mktemp("kafka"))
    (broker,) = services.build_services(settings, ["kafka"])
    services.start(settings, broker)
    try:
        services.wait_healthy(settings, broker)
        yield settings
    finally:
        assert services.stop(settings, broker) == "stopped"


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory):
    """One small Delta-enabled session for the whole run (local[1], one shuffle partition, no UI)."""
    from spark_jobs.session import get_spark

    settings = make_settings(tmp_path_factory.mktemp("spark"), spark_master="local[1]")
    session = get_spark(
        "adstream-tests",
        settings,
        extra={
            "spark.sql.shuffle.partitions": "1",
            "spark.ui.enabled": "false",
            "spark.driver.memory": "1g",
            "spark.databricks.delta.snapshotPartitions": "1",
        },
    )
    yield session
    session.stop()
