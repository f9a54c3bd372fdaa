"""The optimizer's Prometheus metrics, served on OPTIMIZER_METRICS_PORT while it runs against a real broker,
shared store and campaign store."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adstream.contracts import Topic
from adstream.messaging import ensure_topics, make_producer
from optimizer.forecast import (
    MAX_STRENGTH_CLICKS,
    MAX_STRENGTH_IMPRESSIONS,
    PRIOR_STRENGTH_CLICKS,
    PRIOR_STRENGTH_IMPRESSIONS,
)
from optimizer.service import run
from tests.conftest import free_port
from tests.optimizer.test_service_kafka import _feedback, settings  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on ``url``: (sample name, labels) -> value."""
    families = text_string_to_metric_families(httpx.get(url, timeout=10).text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def total(samples: dict, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def test_the_optimizer_exports_its_lag_its_tick_time_and_the_decisions_it_applied(settings):  # noqa: F811
    settings = settings.model_copy(update={"optimizer_metrics_port": free_port(), "optimizer_tick_s": 0.2})
    url = f"http://{settings.bind_host}:{settings.optimizer_metrics_port}/metrics"
    ensure_topics(settings, [Topic.AD_FEEDBACK, Topic.CAMPAIGN_DECISIONS])
    producer = make_producer(settings)
    at = datetime.now(UTC) - timedelta(seconds=5)
    for event_type in ("impression", "click", "impression"):
        event = _feedback("kopt", event_type, at, "web", "mobile")
        producer.send(Topic.AD_FEEDBACK, key=event["auction_id"].encode(), value=event)
    producer.flush(timeout=30)
    producer.close(timeout=10)

    stop, error = threading.Event(), []

    def optimize() -> None:
        try:
            run(settings, stop=stop)
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=optimize, daemon=True)
    thread.start()
    try:
        deadline, samples = time.monotonic() + 60, {}
        while time.monotonic() < deadline and not error:
            try:
                samples = scrape(url)
            except httpx.TransportError:  # not serving yet
                time.sleep(0.2)
                continue
            if total(samples, "adstream_optimizer_tick_duration_seconds_count") >= 3:
                break
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive() and not error, error
    assert total(samples, "adstream_optimizer_tick_duration_seconds_count") >= 3
    assert total(samples, "adstream_optimizer_tick_duration_seconds_sum") > 0
    assert total(samples, "adstream_optimizer_decisions_applied_total") >= 1  # kopt's first decision at least
    # The priors' strengths the tick estimated (the topic may hold other tests' events too), within their bounds.
    strength = "adstream_optimizer_prior_strength_trials"
    strengths = {dict(labels)["rate"]: v for (name, labels), v in samples.items() if name == strength}
    assert strengths.keys() == {"ctr", "cvr"}
    assert PRIOR_STRENGTH_IMPRESSIONS <= strengths["ctr"] <= MAX_STRENGTH_IMPRESSIONS
    assert PRIOR_STRENGTH_CLICKS <= strengths["cvr"] <= MAX_STRENGTH_CLICKS
    lag = {
        dict(labels)["partition"]: v
        for (name, labels), v in samples.items()
        if name == "adstream_optimizer_consumer_lag_records" and dict(labels)["topic"] == Topic.AD_FEEDBACK
    }
    assert lag and set(lag.values()) == {0}, lag  # every partition read to its end between ticks
    with pytest.raises(httpx.TransportError):  # the server stops with the optimizer
        httpx.get(url, timeout=2)
