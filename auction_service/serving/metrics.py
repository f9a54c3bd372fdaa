"""Prometheus metrics of one service instance (its own registry, so tests can build many apps)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Auctions answer in about a millisecond; the buckets resolve that and the tail.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass
class ServiceMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.auction_latency = Histogram(
            "adstream_auction_latency_seconds", "Auction handling time, request to response", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.auctions = Counter("adstream_auctions_total", "Auctions run", ["outcome"], registry=r)
        self.fill_rate = Gauge("adstream_fill_rate", "Share of auctions that returned an ad", registry=r)
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
        self.model_swaps = Counter("adstream_model_swaps_total", "Champion hot swaps", registry=r)
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
        self.calibration_swaps = Gauge(
            "adstream_pctr_calibration_swaps", "Online calibration maps swapped in since start", registry=r
        )
        self.campaigns_serving = Gauge("adstream_campaigns_serving", "Active campaigns in the cache", registry=r)
        self.rejected_requests = Counter(
            "adstream_rejected_requests_total", "Requests refused with 4xx", ["reason"], registry=r
        )
