"""Prometheus metrics of the background processes: the streaming job, the ad manager and the optimizer.

Each process keeps a registry of its own (with the ``process_*`` and ``python_*`` families) and serves it
with prometheus_client's HTTP server on BIND_HOST and its port setting (``STREAMING_METRICS_PORT``,
``AD_MANAGER_METRICS_PORT``, ``OPTIMIZER_METRICS_PORT``; 0 exports nothing). A port already taken is
logged and the process runs on without metrics: they must never stop the work they describe. The
auction service serves its registry on its own ``/metrics`` route instead.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, start_http_server

log = logging.getLogger(__name__)


def process_registry() -> CollectorRegistry:
    """A new registry holding the default registry's process_*, python_gc_* and python_info families."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


@dataclass
class Exporter:
    """``registry`` served over HTTP (any path answers; Prometheus scrapes ``/metrics``) until ``close``."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(registry: CollectorRegistry, host: str, port: int, what: str) -> Exporter | None:
    """Serves ``registry`` on ``host:port``; None when ``port`` is 0 or cannot be bound (logged)."""
    if not port:
        return None
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.warning("%s metrics not exported: %s:%d cannot be bound (%s)", what, host, port, exc)
        return None
    exporter = Exporter(server, thread)
    log.info("%s metrics on %s", what, exporter.url)
    return exporter
