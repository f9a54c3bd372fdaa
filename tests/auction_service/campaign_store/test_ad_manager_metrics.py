"""The ad manager's Prometheus metrics, served on AD_MANAGER_METRICS_PORT while it consumes a real broker."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from auction_service.campaign_store import instructions as campaigns
from tests.auction_service.campaign_store.test_ad_manager import (  # noqa: F401 (fixtures)
    NOW,
    RunningAdManager,
    sessions,
    settings,
    spec,
    topic,
    wait_until,
)
from tests.conftest import free_port

pytestmark = pytest.mark.slow


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on ``url``: (sample name, labels) -> value."""
    families = text_string_to_metric_families(httpx.get(url, timeout=10).text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and dict(ls).items() >= labels.items())


def test_the_ad_manager_exports_its_lag_its_batch_time_and_what_it_applied(settings, topic):  # noqa: F811
    settings = settings.model_copy(update={"ad_manager_metrics_port": free_port()})
    url = f"http://{settings.bind_host}:{settings.ad_manager_metrics_port}/metrics"
    campaign_id = f"lag-{uuid.uuid4().hex[:10]}"
    # One campaign, so one key and one partition: a create, then a stop and three more stops.
    records = [campaigns.create_instruction(spec(), now=NOW, campaign_id=campaign_id)]
    records += [campaigns.stop_instruction(campaign_id, now=NOW + timedelta(seconds=i)) for i in range(4)]
    campaigns.publish_instructions(settings, records, topic=topic)

    holding, release = threading.Event(), threading.Event()

    def hold_the_first(_instruction, _result) -> None:
        holding.set()
        release.wait(30)

    manager = RunningAdManager(settings, hold_the_first, topic)
    try:
        wait_until(holding.is_set, "the first record applied")
        during = scrape(url)
    finally:
        release.set()
    # Polled, not applied yet: all five are behind, as the group's committed offset says.
    assert total(during, "adstream_ad_manager_consumer_lag_records", topic=topic) == 5
    assert total(during, "adstream_ad_manager_batch_duration_seconds_count") == 0

    wait_until(lambda: total(scrape(url), "adstream_ad_manager_records_total") == 5, "the five records counted")
    after = scrape(url)
    manager.stop()
    assert total(after, "adstream_ad_manager_consumer_lag_records", topic=topic) == 0
    assert total(after, "adstream_ad_manager_batch_duration_seconds_count") >= 1
    assert total(after, "adstream_ad_manager_batch_duration_seconds_sum") > 0
    outcomes = {dict(ls)["outcome"]: v for (n, ls), v in after.items() if n == "adstream_ad_manager_records_total"}
    assert outcomes == {"created": 1, "stopped": 1, "already_stopped": 3}
    assert any(name.startswith("process_") for name, _ in after)
    with pytest.raises(httpx.TransportError):  # the server stops with the ad manager
        httpx.get(url, timeout=2)
