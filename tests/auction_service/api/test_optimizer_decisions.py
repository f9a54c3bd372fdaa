"""End to end against a real broker and shared store: an optimizer decision applied now changes the next
auction's ranking within a second, on the platform it is for only, and its record is on campaign-decisions."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from adstream.contracts import Topic
from adstream.events import PLATFORMS, CampaignDecision, CampaignGoals, Targeting
from adstream.messaging import make_producer
from auction_service.api.app import create_app
from optimizer.service import Decided, apply_decisions
from tests.auction_service.conftest import BROWSER_UA, instruction, running_service, topic_records

pytestmark = pytest.mark.slow

GOALS = CampaignGoals(optimize=True, conversion_value_micros=20_000_000)
DESKTOP = Targeting(device_types=["desktop"])
WEB_DESKTOP = PLATFORMS.index("web/desktop")


@pytest.fixture(scope="module")
def client(service_settings):
    with (
        running_service(
            service_settings,
            # The optimized campaign outbids the other by far at its base bid; its budget outlasts the
            # reservations of every auction the test runs, however many a slow machine needs.
            instruction(
                "opt",
                bid_micros=2_000_000,
                targeting=DESKTOP,
                goals=GOALS,
                daily_budget_micros=10_000_000_000,
                total_budget_micros=10_000_000_000,
            ),
            instruction("rival", bid_micros=200_000, targeting=DESKTOP),
        ) as state,
        TestClient(create_app(state=state), headers={"User-Agent": BROWSER_UA}) as test_client,
    ):
        yield test_client, service_settings


def _winner(client: TestClient, channel: str) -> str | None:
    response = client.post("/v1/auction", json={"device_type": "desktop", "channel": channel})
    assert response.status_code in (200, 204), response.text
    return response.json()["campaign_id"] if response.status_code == 200 else None


def _decision(multiplier: float, now: datetime) -> Decided:
    ppm = np.full(len(PLATFORMS), 1_000_000, dtype=np.int64)
    ppm[WEB_DESKTOP] = round(multiplier * 1_000_000)
    platforms = [
        {"platform": p, "multiplier": ppm[i] / 1e6, "reason": "value", "impressions": 0, "clicks": 0, "conversions": 0,
         "spend_micros": 0, "ctr": 0.03, "cvr": 0.05, "cvr_drawn": 0.05, "ctr_trend_per_bucket": 0.0,
         "cvr_trend_per_bucket": 0.0, "p_losing": 0.0}
        for i, p in enumerate(PLATFORMS)
    ]  # fmt: skip
    version = int(now.timestamp() * 1e6)
    record = CampaignDecision(
        decision_id=f"opt:{version}", campaign_id="opt", version=version, decided_at=now, window_start=now,
        value_micros=GOALS.value_micros, base_bid_micros=2_000_000, platforms=platforms,
    )  # fmt: skip
    return Decided.of(record, ppm)


def test_a_decision_applied_now_changes_the_next_auctions_ranking_within_a_second(client):
    client, settings = client
    assert _winner(client, "web") == "opt" and _winner(client, "app") == "opt"
    producer = make_producer(settings)
    shared = redis.Redis.from_url(settings.shared_store_url)

    def publish(records: list[dict]) -> None:
        for record in records:
            producer.send(Topic.CAMPAIGN_DECISIONS, key=record["campaign_id"], value=record).get(timeout=30)

    def apply(multiplier: float) -> float:
        began = time.monotonic()
        apply_decisions([_decision(multiplier, datetime.now(UTC))], publish=publish, shared=shared,
                        namespace=settings.shared_store_namespace)  # fmt: skip
        return began

    try:
        # Paused on web/desktop: the rival takes those auctions; app/desktop is untouched.
        applied_at = apply(0.0)
        while _winner(client, "web") != "rival":
            assert time.monotonic() - applied_at < 1.0, "the pause did not reach serving within a second"
        assert _winner(client, "app") == "opt"
        # At 0.05x (0.10 USD a click, under the rival's 0.20): still the rival's.
        apply(0.05)
        time.sleep(1.0)
        assert {_winner(client, "web") for _ in range(5)} == {"rival"}
        # At 1x again: the optimized campaign wins web/desktop again.
        applied_at = apply(1.0)
        while _winner(client, "web") != "opt":
            assert time.monotonic() - applied_at < 1.0, "the new decision did not reach serving within a second"
    finally:
        producer.close(timeout=10)
    published = [
        CampaignDecision.model_validate_json(r.value) for r in topic_records(settings, Topic.CAMPAIGN_DECISIONS)
    ]
    assert [d.platforms[WEB_DESKTOP].multiplier for d in published if d.campaign_id == "opt"][-3:] == [0.0, 0.05, 1.0]
