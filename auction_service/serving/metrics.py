"""Prometheus metrics of one service instance (its own registry, so tests can build many apps), and the port
on which each replica serves them with its /v1/stats (``serve_replica``)."""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from adstream.exporter import Exporter

log = logging.getLogger(__name__)
# Auctions answer in about a millisecond; the buckets resolve that and the tail.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass
class BidFilterMeter:
    """What the bid-request filter did since the service started (``auction_service.serving.bid_filter``).

    Plain numbers, changed on the event loop only (a request pays no lock); /metrics reads them through
    ``BidFilterCollector`` and the dashboard through ``snapshot``. Revenue in CPM micros (x 1000, as
    ``ml.bid_filter`` counts it).
    """

    screened: int = 0  # requests a filter scored
    shed: int = 0  # answered 204 without an auction
    explored: int = 0  # passed whatever their score (the exploration share)
    time_saved_s: float = 0.0  # shed requests x the filter's mean handling time of the auctions it sheds
    explored_revenue_cpm_micros: int = 0  # earned by explored requests
    explored_revenue_below_threshold_cpm_micros: int = 0  # of it, by explored requests scored below the threshold
    version: str | None = None  # of the filter served
    threshold: float | None = None

    @property
    def shed_share(self) -> float:
        return self.shed / self.screened if self.screened else math.nan

    @property
    def revenue_retained_estimate(self) -> float:
        """Share of the exploration slice's revenue the threshold keeps: what the filter keeps of all revenue."""
        total = self.explored_revenue_cpm_micros
        return 1 - self.explored_revenue_below_threshold_cpm_micros / total if total else math.nan

    def snapshot(self) -> dict[str, Any]:
        def finite(value: float) -> float | None:
            return None if math.isnan(value) else value

        return {
            "version": self.version,
            "threshold": self.threshold,
            "screened": self.screened,
            "shed": self.shed,
            "explored": self.explored,
            "shed_share": finite(self.shed_share),
            "revenue_retained_estimate": finite(self.revenue_retained_estimate),
            "time_saved_s": self.time_saved_s,
            # The shares' terms too, so replicas' snapshots add up to the fleet's (``dashboard.sources``).
            "explored_revenue_cpm_micros": self.explored_revenue_cpm_micros,
            "explored_revenue_below_threshold_cpm_micros": self.explored_revenue_below_threshold_cpm_micros,
        }


class BidFilterCollector(Collector):
    """``BidFilterMeter`` as Prometheus metrics, read when /metrics is scraped.

    The shares (shed, revenue retained) are not exported: they are ratios of these counters, which
    ``rate()`` gives over any window (the dashboard's snapshot has them since start).
    """

    def __init__(self, meter: BidFilterMeter) -> None:
        self.meter = meter

    def collect(self) -> Iterator[Metric]:
        m = self.meter
        yield CounterMetricFamily("adstream_bid_filter_screened", "Requests the bid filter scored", value=m.screened)
        yield CounterMetricFamily("adstream_bid_filter_shed", "Requests the bid filter answered 204", value=m.shed)
        yield CounterMetricFamily(
            "adstream_bid_filter_explored", "Requests passed whatever their score (exploration)", value=m.explored
        )
        yield CounterMetricFamily(
            "adstream_bid_filter_time_saved_seconds",
            "Estimated auction time saved: shed requests x mean handling time of the auctions the filter sheds",
            value=m.time_saved_s,
        )
        revenue = CounterMetricFamily(
            "adstream_bid_filter_explored_revenue_cpm_micros",
            "Revenue (CPM micros) of explored requests, by whether the threshold would have shed them",
            labels=["below_threshold"],
        )
        below = m.explored_revenue_below_threshold_cpm_micros
        revenue.add_metric(["true"], below)
        revenue.add_metric(["false"], m.explored_revenue_cpm_micros - below)
        yield revenue
        yield GaugeMetricFamily(
            "adstream_bid_filter_version", "Serving bid-filter version (0: none)", value=float(m.version or 0)
        )
        threshold = math.nan if m.threshold is None else m.threshold
        yield GaugeMetricFamily("adstream_bid_filter_threshold", "Serving bid-filter threshold", value=threshold)


class WatchCounts(Protocol):
    """What ``ModelWatcher`` counts as plain ints (``auction_service.serving.champion``)."""

    swaps: int
    recalibrations: int


class ModelWatchCollector(Collector):
    """The champion watcher's own counts, read at scrape: no second count to keep in step with it.

    ``watcher`` is set when the service starts one; before that both counters are 0.
    """

    def __init__(self) -> None:
        self.watcher: WatchCounts | None = None

    def collect(self) -> Iterator[Metric]:
        w = self.watcher
        yield CounterMetricFamily(
            "adstream_model_swaps", "ctr-model champion versions hot-swapped in while serving",
            value=w.swaps if w else 0,
        )  # fmt: skip
        yield CounterMetricFamily(
            "adstream_pctr_calibration_swaps", "Online calibration maps swapped in while serving",
            value=w.recalibrations if w else 0,
        )  # fmt: skip


@dataclass
class ServiceMetrics:
    """Every metric family of one service instance. Counters end in ``_total`` and a counter's label values
    are disjoint, so a sum over them counts each thing once; ratios (fill rate, shares) are left to ``rate()``."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    bid_filter: BidFilterMeter = field(default_factory=BidFilterMeter)
    model_watch: ModelWatchCollector = field(default_factory=ModelWatchCollector)

    def __post_init__(self) -> None:
        r = self.registry
        # The default registry's process_*, python_gc_* and python_info families, on this one.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        r.register(BidFilterCollector(self.bid_filter))
        r.register(self.model_watch)
        self.auction_latency = Histogram(
            "adstream_auction_latency_seconds",
            "Time to run one auction: eligibility, scoring, pricing and the winner's hold (an OpenRTB request "
            "runs one per imp)",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.auctions = Counter("adstream_auctions_total", "Auctions run, by outcome (filled, no_fill)", ["outcome"],
                                registry=r)  # fmt: skip
        self.log_records_lost = Counter(
            "adstream_log_records_lost_total",
            "Auction-log records (auctions, refused events) the broker never acknowledged; the auction was served",
            registry=r,
        )
        self.events = Counter("adstream_events_total", "Feedback events", ["event_type", "status"], registry=r)
        self.events_refused = Counter(
            "adstream_events_refused_total", "Events refused (never charged), by reason", ["reason"], registry=r
        )
        self.events_charged = Counter(
            "adstream_events_journaled_total", "Events journaled, by what the ledger did", ["charge_status"], registry=r
        )
        self.events_ivt = Counter(
            "adstream_events_ivt_total", "Events tagged general invalid traffic, by reason", ["reason"], registry=r
        )
        self.journal_relayed = Counter(
            "adstream_journal_relayed_total", "Journaled events published by the relay, not their request", registry=r
        )
        self.spend = Counter(
            "adstream_spend_micros_total", "Spend recorded in the ledger (micros)", ["pricing_model"], registry=r
        )
        self.model_version = Gauge("adstream_model_version", "Serving ctr-model version", registry=r)
        # Calibration live: rate(observed) / rate(expected) is observed / expected clicks (alert outside 0.8-1.25).
        self.expected_clicks = Counter(
            "adstream_expected_clicks_total", "Sum of the served pCTRs of delivered impressions",
            ["model_version", "pricing_model"], registry=r,
        )  # fmt: skip
        self.observed_clicks = Counter(
            "adstream_observed_clicks_total", "Delivered clicks", ["model_version", "pricing_model"], registry=r
        )
        self.calibration_slope = Gauge("adstream_pctr_calibration_slope", "Served calibration: slope", registry=r)
        self.calibration_intercept = Gauge(
            "adstream_pctr_calibration_intercept", "Served calibration: intercept (log-odds)", registry=r
        )
        self.calibration_offset = Gauge(
            "adstream_pctr_calibration_offset", "Served calibration: log-odds offset of a pricing model",
            ["pricing_model"], registry=r,
        )  # fmt: skip
        self.pacing_updates = Counter("adstream_pacing_updates_total", "Pacing controller passes run here", registry=r)
        self.pacing_leader = Gauge("adstream_pacing_leader", "1 while this replica runs the controllers", registry=r)
        self.pacing_multiplier = Gauge(
            "adstream_pacing_multiplier", "Pacing bid multiplier λ per campaign", ["campaign_id"], registry=r
        )
        self.pacing_throttle = Gauge(
            "adstream_pacing_throttle_rate", "Share of auctions a campaign sits out", ["campaign_id"], registry=r
        )
        self.campaigns_serving = Gauge("adstream_campaigns_serving", "Active campaigns in the cache", registry=r)
        self.rejected_requests = Counter(
            "adstream_rejected_requests_total", "Requests answered 4xx, by reason", ["reason"], registry=r
        )

    def log_record_lost(self, _reason: str) -> None:
        """``LogProducer``'s ``on_lost``."""
        self.log_records_lost.inc()


def status_reason(status_code: int) -> str:
    """A 4xx status as a ``reason`` label value: its phrase in snake case (``not_found``, ``unauthorized``)."""
    return HTTPStatus(status_code).phrase.lower().replace(" ", "_").replace("-", "_")


class _ReplicaServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds the process up at exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """One line per scrape would drown the service's log."""


def replica_routes(registry: CollectorRegistry, stats: Callable[[], dict[str, Any]]) -> Callable[..., Iterable[bytes]]:
    """A WSGI app of one replica's operations: /metrics (``registry``), /v1/stats (``stats()`` as JSON), /healthz."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path in ("/v1/stats", "/healthz"):
            body = json.dumps(stats() if path == "/v1/stats" else {"status": "ok"}, allow_nan=False).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"/metrics, /v1/stats or /healthz\n"]

    return app


def serve_replica(
    registry: CollectorRegistry, stats: Callable[[], dict[str, Any]], host: str, port: int
) -> Exporter | None:
    """This replica's /metrics and /v1/stats on ``host:port`` of its own, from a thread, until ``close``.

    AUCTION_PORT is shared (SO_REUSEPORT): a scrape there reaches one replica at random. Here each replica is
    one target, with its own counters and ``process_*``. None when ``port`` is 0 or cannot be bound (logged):
    metrics never stop the auctions they describe.
    """
    if not port:
        return None
    try:
        server = make_server(host, port, replica_routes(registry, stats), _ReplicaServer, _QuietHandler)
    except OSError as exc:
        log.warning("auction replica metrics not served: %s:%d cannot be bound (%s)", host, port, exc)
        return None
    thread = threading.Thread(target=server.serve_forever, name=f"replica-metrics-{port}", daemon=True)
    thread.start()
    return Exporter(server, thread)
