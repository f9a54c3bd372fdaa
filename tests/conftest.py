"""Shared fixtures: one real Kafka broker and one Spark session per test run.

The broker is started from the jar cache `make setup` fills, on free ports in a
temporary directory, and stopped (its whole process group) when the run ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from adstream.settings import Settings
from benchmarks.harness import free_port, isolated_settings
from devstack import services
from spark_jobs.session import get_spark

__all__ = ["free_port", "make_settings", "shared_namespace"]  # what the tests import from here

# Settings isolated in a test's temporary directory, on free ports, sharing the project's jar cache.
make_settings = isolated_settings


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
def shared_store_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live redis-server (the auction replicas' shared store) for the whole run; tests isolate themselves by
    SHARED_STORE_NAMESPACE (``shared_namespace``)."""
    settings = make_settings(tmp_path_factory.mktemp("shared-store"))
    (server,) = services.build_services(settings, ["shared-store"])
    services.start(settings, server)
    try:
        services.wait_healthy(settings, server)
        yield settings.shared_store_url
    finally:
        assert services.stop(settings, server) == "stopped"


def shared_namespace() -> str:
    """A namespace of the shared store no other test uses."""
    return f"t{free_port()}-{time.monotonic_ns() % 1_000_000}"


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory):
    """One small Delta-enabled session for the whole run (local[1], one shuffle partition, no UI)."""
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
