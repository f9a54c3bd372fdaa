"""The bid filter in the service: screening one request, its counts on /metrics, and bid-filter@champion
loaded and hot-swapped from a real MLflow store (SQLite + local artifacts)."""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import pytest
from prometheus_client import generate_latest

from adstream.contracts import BID_FILTER_EXPERIMENT, BID_FILTER_MODEL, CHAMPION_ALIAS
from adstream.settings import Settings
from auction_service.domain import AuctionContext
from auction_service.serving.bid_filter import (
    UNSCREENED,
    BidFilterSlot,
    Screen,
    ServedBidFilter,
    request_features,
    screen,
    settle_explored,
)
from auction_service.serving.metrics import BidFilterMeter, ServiceMetrics
from ml.bid_filter import BidFilter, RequestFeatures
from ml.bid_filter_registry import ARTIFACT_DIR, ARTIFACT_FILE, register_challenger
from ml.tracking import experiment_id, point_fluent_api_at, tracking_client
from tests.conftest import free_port, make_settings
from tests.ml import conftest as ml_fixtures
from tests.ml.auction_logs import register_table

# Scores: sigmoid(-5) = 0.0067 for a 320x50, sigmoid(0) = 0.5 for anything else; 2 ms saved per shed request.
FILTER = BidFilter(bias=0.0, weights={"pl=320x50": -5.0}, threshold=0.5, time_saved_per_shed_s=0.002)
SERVED = ServedBidFilter(FILTER, "3", exploration_share=0.05)


def request(placement: str = "300x250") -> RequestFeatures:
    return RequestFeatures("exchange-a", "news.example.com", placement, "mobile", "USA", "web", "display", 14, 3)


# --- screening ---------------------------------------------------------------------------------


def test_without_a_filter_every_request_passes_unscored_and_uncounted():
    meter = BidFilterMeter()
    screened = screen(None, request("320x50"), 0.0, meter)
    assert screened == UNSCREENED == Screen(passed=True, explored=False, score=None)
    assert screened.record_fields() == {"bid_filter_score": None, "bid_filter_explored": None}
    assert meter == BidFilterMeter()


def test_a_request_below_the_threshold_is_shed_and_counted_with_the_time_it_saves():
    meter = BidFilterMeter()
    screened = screen(SERVED, request("320x50"), 0.5, meter)
    assert not screened.passed and not screened.explored
    assert screened.score == pytest.approx(1 / (1 + math.exp(5)))
    assert (meter.screened, meter.shed, meter.explored, meter.time_saved_s) == (1, 1, 0, 0.002)


def test_a_score_at_the_threshold_passes():
    meter = BidFilterMeter()
    screened = screen(SERVED, request(), 0.9, meter)
    assert screened == Screen(passed=True, explored=False, score=0.5)
    assert screened.record_fields() == {"bid_filter_score": 0.5, "bid_filter_explored": False}
    assert (meter.screened, meter.shed) == (1, 0)


def test_a_draw_below_the_exploration_share_passes_whatever_the_score_and_is_tagged():
    meter = BidFilterMeter()
    screened = screen(SERVED, request("320x50"), 0.049, meter)
    assert screened.passed and screened.explored and screened.score < FILTER.threshold
    assert screened.record_fields()["bid_filter_explored"] is True
    assert (meter.screened, meter.shed, meter.explored, meter.time_saved_s) == (1, 0, 1, 0.0)


def test_the_explored_share_of_requests_is_the_setting():
    meter = BidFilterMeter()
    draws = np.random.default_rng(1).random(20_000)
    screens = [screen(SERVED, request("320x50"), draw, meter) for draw in draws]
    assert sum(s.explored for s in screens) == meter.explored == int((draws < 0.05).sum())
    assert 0.045 < meter.explored / meter.screened < 0.055
    assert meter.shed == 20_000 - meter.explored


def test_revenue_retained_is_estimated_on_the_exploration_slice():
    meter = BidFilterMeter()
    below = screen(SERVED, request("320x50"), 0.0, meter)  # explored, would have been shed
    above = screen(SERVED, request(), 0.0, meter)  # explored, would have passed anyway
    not_explored = screen(SERVED, request(), 0.9, meter)
    settle_explored(SERVED, below, 1_000, meter)
    settle_explored(SERVED, above, 99_000, meter)
    settle_explored(SERVED, not_explored, 5_000, meter)  # not the exploration slice: not counted
    assert (meter.explored_revenue_cpm_micros, meter.explored_revenue_below_threshold_cpm_micros) == (100_000, 1_000)
    assert meter.revenue_retained_estimate == pytest.approx(0.99)


def test_the_counts_are_on_metrics_and_in_the_dashboard_snapshot():
    metrics = ServiceMetrics()
    meter = metrics.bid_filter
    meter.version, meter.threshold = "3", 0.5
    for draw in (0.9, 0.9, 0.9, 0.01):
        settle_explored(SERVED, screen(SERVED, request("320x50"), draw, meter), 4_000, meter)
    text = generate_latest(metrics.registry).decode()
    for line in (
        "adstream_bid_filter_screened_total 4.0", "adstream_bid_filter_shed_total 3.0",
        "adstream_bid_filter_explored_total 1.0", "adstream_bid_filter_time_saved_seconds_total 0.006",
        'adstream_bid_filter_explored_revenue_cpm_micros_total{below_threshold="true"} 4000.0',
        "adstream_bid_filter_version 3.0", "adstream_bid_filter_threshold 0.5",
    ):  # fmt: skip
        assert line in text.splitlines(), line
    assert "shed_share" not in text and "revenue_retained" not in text  # ratios of the counters: rate() gives them
    assert meter.snapshot() == {
        "version": "3", "threshold": 0.5, "screened": 4, "shed": 3, "explored": 1, "shed_share": 0.75,
        "revenue_retained_estimate": 0.0, "time_saved_s": pytest.approx(0.006),
        # the shares' terms, so that replicas' snapshots add up (dashboard.sources.fleet_bid_filter)
        "explored_revenue_cpm_micros": 4_000, "explored_revenue_below_threshold_cpm_micros": 4_000,
    }  # fmt: skip


def test_before_any_request_the_shares_are_unknown():
    assert BidFilterMeter().snapshot()["shed_share"] is None
    assert BidFilterMeter().snapshot()["revenue_retained_estimate"] is None


def test_request_features_come_from_the_auction_context():
    at = datetime(2026, 11, 29, 13, 5, tzinfo=UTC)  # a Sunday: Spark's dayofweek 1
    context = AuctionContext("a1", at, country="DEU", device_type="tablet", channel="app", content_type="video",
                             publisher_id="exchange-b")  # fmt: skip
    features = request_features(context, domain="com.example.game", placement="video")
    expected = RequestFeatures("exchange-b", "com.example.game", "video", "tablet", "DEU", "app", "video", 13, 1)
    assert features == expected


# --- bid-filter@champion in the service ----------------------------------------------------------


# An empty MLflow store per test (SQLite + local artifacts), as the ml tests make it.
mlflow_db_template, mlflow_uri = ml_fixtures.mlflow_db_template, ml_fixtures.mlflow_uri


@pytest.fixture
def settings(tmp_path: Path, mlflow_uri: str) -> Settings:
    return make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri)


def make_champion(uri: str, bid_filter: BidFilter) -> str:
    version = register_table(uri, bid_filter)
    tracking_client(uri).set_registered_model_alias(BID_FILTER_MODEL, CHAMPION_ALIAS, version)
    return version


def test_until_a_first_version_exists_the_service_runs_without_a_filter_and_says_so(settings, caplog):
    with caplog.at_level(logging.WARNING, logger="auction_service.serving.bid_filter"):
        slot = BidFilterSlot.load_at_start(settings)
    assert slot.current is None
    assert "bid-filter@champion does not exist yet" in slot.reason and "bid_filter_training" in slot.reason
    assert f"serving without a bid filter (every request is auctioned): {slot.reason}" in caplog.messages


def test_the_champion_is_loaded_at_start_and_a_new_one_swapped_in(settings):
    uri = settings.mlflow_tracking_uri
    make_champion(uri, FILTER)
    meter = BidFilterMeter()
    slot = BidFilterSlot.load_at_start(settings, meter)
    assert slot.current is not None and slot.current.version == "1" and slot.reason == ""
    assert slot.current.exploration_share == settings.bid_filter_exploration_share
    assert slot.current.model.score(request("320x50")) == FILTER.score(request("320x50"))
    assert slot.poll_once() is False  # unchanged

    stricter = BidFilter(FILTER.bias, FILTER.weights, threshold=0.6)
    make_champion(uri, stricter)
    assert slot.poll_once() is True
    assert (slot.current.version, slot.current.model.threshold, slot.swaps) == ("2", 0.6, 2)
    assert (meter.version, meter.threshold) == ("2", 0.6)
    assert not screen(slot.current, request(), 0.9).passed  # 0.5 < 0.6 now


def test_a_version_that_does_not_load_is_refused_and_the_filter_in_place_keeps_serving(settings, caplog):
    uri = settings.mlflow_tracking_uri
    make_champion(uri, FILTER)
    slot = BidFilterSlot.load_at_start(settings)
    point_fluent_api_at(uri)
    with mlflow.start_run(experiment_id=experiment_id(uri, BID_FILTER_EXPERIMENT)) as run:
        mlflow.log_text('{"format": 99}', f"{ARTIFACT_DIR}/{ARTIFACT_FILE}")
    broken = register_challenger(uri, run.info.run_id)
    tracking_client(uri).set_registered_model_alias(BID_FILTER_MODEL, CHAMPION_ALIAS, broken)
    with caplog.at_level(logging.ERROR, logger="auction_service.serving.bid_filter"):
        assert slot.poll_once() is False
    assert (slot.current.version, slot.failures) == ("1", 1)
    assert any("bid-filter version 2 refused (ValueError: bid filter format 99" in m for m in caplog.messages)
    assert slot.poll_once() is False and slot.failures == 1  # not retried at every poll


def test_an_unreachable_mlflow_leaves_the_service_without_a_filter(tmp_path):
    settings = make_settings(tmp_path, mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")
    slot = BidFilterSlot.load_at_start(settings)
    assert slot.current is None and "does not answer" in slot.reason


def test_a_disabled_filter_loads_nothing_and_polls_nothing(settings):
    make_champion(settings.mlflow_tracking_uri, FILTER)
    slot = BidFilterSlot.load_at_start(settings.model_copy(update={"bid_filter_enabled": False}))
    slot.start()
    assert slot.current is None and slot.reason == "BID_FILTER_ENABLED is false"
    assert not slot.running


def test_the_watcher_thread_swaps_in_a_champion_promoted_after_start(settings):
    slot = BidFilterSlot.load_at_start(settings.model_copy(update={"model_poll_s": 0.05}))
    slot.start()
    assert slot.running
    try:
        make_champion(settings.mlflow_tracking_uri, FILTER)
        deadline = time.monotonic() + 30
        while slot.current is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slot.current is not None and slot.current.version == "1"
    finally:
        slot.stop()
    assert not slot.running
