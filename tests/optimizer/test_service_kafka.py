"""The optimizer against a real broker, shared store and campaign store: it rebuilds its windows from Kafka,
applies its decisions (campaign-decisions, then the shared store), and a restart on the same data decides
the same."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis

from adstream.contracts import Topic
from adstream.decisions import serve_key, unpack
from adstream.events import PLATFORMS, CampaignDecision, CampaignGoals, Targeting
from adstream.messaging import ensure_topics, make_producer
from auction_service.campaign_store import store
from auction_service.campaign_store.db import make_engine, make_session_factory, migrate
from optimizer.service import run
from tests.auction_service.conftest import instruction, topic_records
from tests.conftest import shared_namespace

pytestmark = pytest.mark.slow

GOALS = CampaignGoals(optimize=True, conversion_value_micros=20_000_000)


@pytest.fixture
def settings(kafka_settings, shared_store_url, tmp_path):
    settings = kafka_settings.model_copy(
        update={
            "local_dir": tmp_path / "local", "campaign_db_url": f"sqlite:///{tmp_path / 'campaigns.db'}",
            "shared_store_url": shared_store_url, "shared_store_namespace": shared_namespace(),
        }
    )  # fmt: skip
    engine = make_engine(settings)
    migrate(settings, engine)
    with make_session_factory(engine)() as session:
        store.apply_instruction(session, instruction("kopt", pricing_model="CPC", bid_micros=1_000_000, goals=GOALS,
                                                     targeting=Targeting()))  # fmt: skip
        store.apply_instruction(session, instruction("kstatic", pricing_model="CPC", bid_micros=1_000_000))
    engine.dispose()
    return settings


def _feedback(campaign_id: str, event_type: str, at: datetime, channel: str, device: str, cost: int = 0) -> dict:
    return {
        "schema_version": 1, "event_id": f"k-{uuid.uuid4().hex}", "event_type": event_type,
        "event_time": at.isoformat(), "auction_id": f"a-{uuid.uuid4().hex[:12]}", "campaign_id": campaign_id,
        "advertiser_id": "adv", "ad_id": "ad", "channel": channel, "device_type": device, "pricing_model": "CPC",
        "cost_micros": cost, "charge_status": "charged" if cost else "not_billable",
    }  # fmt: skip


def test_the_optimizer_rebuilds_from_kafka_applies_and_a_restart_decides_the_same(settings):
    ensure_topics(settings, [Topic.AD_FEEDBACK, Topic.CAMPAIGN_DECISIONS])
    now = datetime.now(UTC)
    events = []
    # web/mobile converts 20 % of clicks at 1 USD a click (4 USD of value a click); app/mobile 1 % (0.20 USD).
    for channel, conversions in (("web", 120), ("app", 6)):
        for i in range(600):
            at = now - timedelta(seconds=5 + i % 600)
            events.append(_feedback("kopt", "impression", at, channel, "mobile"))
            events.append(_feedback("kopt", "click", at, channel, "mobile", cost=1_000_000))
            if i < conversions:
                events.append(_feedback("kopt", "conversion", at, channel, "mobile"))
    # Older than the window: never counted.
    events += [_feedback("kopt", "conversion", now - timedelta(hours=2), "app", "mobile") for _ in range(500)]
    producer = make_producer(settings)
    for event in events:
        producer.send(Topic.AD_FEEDBACK, key=event["auction_id"].encode(), value=event,
                      timestamp_ms=int(datetime.fromisoformat(event["event_time"]).timestamp() * 1000))  # fmt: skip
    producer.flush(timeout=30)
    producer.close(timeout=10)

    first = run(settings, once=True)
    web, app = PLATFORMS.index("web/mobile"), PLATFORMS.index("app/mobile")
    sent = first.sent["kopt"]
    assert "kstatic" not in first.sent  # optimize is off: no decision
    assert sent[web] > 1_500_000 and sent[app] == 0  # bid up; confidently losing
    shared = redis.Redis.from_url(settings.shared_store_url)
    served = unpack(shared.hget(serve_key(settings.shared_store_namespace), "kopt"))
    assert list(served.multipliers_ppm) == sent.tolist()
    # Read to the end of the log: the decision reflects Kafka as of after the last event was produced (the
    # newest event is 5 s older than ``now``), not merely as of that event's time.
    assert now.timestamp() < served.data_until_us / 1_000_000 < time.time()
    records = [
        CampaignDecision.model_validate(json.loads(r.value))
        for r in topic_records(settings, Topic.CAMPAIGN_DECISIONS)
        if r.key == b"kopt"
    ]
    (record,) = records[-1:]
    assert record.platforms[app].reason == "paused" and record.platforms[app].clicks == 600
    assert record.platforms[app].conversions == 6  # the two-hour-old ones were not read

    second = run(settings, once=True)  # a restart: the same windows from the log alone, the same decisions
    row_first, row_second = first.windows.rows["kopt"], second.windows.rows["kopt"]
    assert (first.windows.totals()[row_first] == second.windows.totals()[row_second]).all()
    again = second.sent["kopt"]
    assert (again[web], again[app]) == (sent[web], 0)
    # Thin cells draw anew each round (a minute); within one, the whole decision repeats.
    if int(datetime.now(UTC).timestamp() // first.round_s) == int(now.timestamp() // first.round_s):
        assert again.tolist() == sent.tolist()
