"""The background processes' metrics server: off at port 0, never fatal on a taken port, named by `adstream status`."""

from __future__ import annotations

import logging
import socket

import httpx
from prometheus_client import Counter

from adstream.exporter import process_registry, serve
from devstack import services
from tests.conftest import free_port, make_settings


def test_a_registry_is_served_with_the_process_families_until_closed():
    registry = process_registry()
    Counter("adstream_test_things_total", "Things", registry=registry).inc(3)
    exporter = serve(registry, "127.0.0.1", free_port(), "test")
    assert exporter is not None
    try:
        text = httpx.get(exporter.url, timeout=5).text
    finally:
        exporter.close()
    assert "adstream_test_things_total 3.0" in text.splitlines()
    assert "process_cpu_seconds_total" in text and "python_info" in text
    assert not exporter.thread.is_alive()


def test_port_zero_exports_nothing_and_a_taken_port_is_logged_not_fatal(caplog):
    assert serve(process_registry(), "127.0.0.1", 0, "test") is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="adstream.exporter"):
            assert serve(process_registry(), "127.0.0.1", port, "ad manager") is None
    assert f"ad manager metrics not exported: 127.0.0.1:{port} cannot be bound" in caplog.text


def test_status_names_the_metrics_url_of_each_process_that_exports_them(tmp_path):
    ports = {"streaming_metrics_port": free_port(), "ad_manager_metrics_port": free_port()}
    settings = make_settings(tmp_path, **ports)
    urls = {s.name: s.url for s in services.build_services(settings, ["streaming", "ad-manager", "optimizer"])}
    assert urls["streaming"].endswith(f", metrics http://127.0.0.1:{ports['streaming_metrics_port']}/metrics")
    assert urls["ad-manager"].endswith(f", metrics http://127.0.0.1:{ports['ad_manager_metrics_port']}/metrics")
    assert "metrics" not in urls["optimizer"]  # OPTIMIZER_METRICS_PORT=0: not exported
    env = services.settings_env(settings)
    assert env["STREAMING_METRICS_PORT"] == str(ports["streaming_metrics_port"])
    assert env["OPTIMIZER_METRICS_PORT"] == "0"
