"""The ad manager against the real broker and a fresh SQLite store per test.

Each test has a consumer group of its own. Tests that publish malformed records use a
topic of their own too, so no other consumer of the shared campaign-instructions topic
meets them; tests on the shared topic look only at their own campaigns.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

from adstream.contracts import Topic
from adstream.events import CampaignInstruction, CampaignSpec, CampaignStatus
from adstream.messaging import ensure_topics, make_producer, wait_for_broker
from adstream.settings import Settings
from auction_service.campaign_store import ad_manager, store
from auction_service.campaign_store import instructions as campaigns
from auction_service.campaign_store.db import make_engine, make_session_factory, migrate

pytestmark = pytest.mark.slow

NOW = datetime.now(UTC).replace(microsecond=0)


def spec(**overrides: object) -> CampaignSpec:
    values: dict[str, object] = {
        "advertiser_id": "adv-1",
        "ad_id": "amz-0001",
        "category": "Automotive",
        "pricing_model": "CPC",
        "bid_micros": 400_000,
        "total_budget_micros": 500_000_000,
        "daily_budget_micros": 100_000_000,
        "flight_start": NOW - timedelta(days=1),
        "flight_end": NOW + timedelta(days=30),
    }
    values.update(overrides)
    return CampaignSpec(**values)


@pytest.fixture
def settings(kafka_settings: Settings, tmp_path) -> Settings:
    settings = kafka_settings.model_copy(
        update={
            "campaign_db_url": f"sqlite:///{tmp_path / 'campaigns.db'}",
            "ad_manager_group": f"ad-manager-{uuid.uuid4().hex[:10]}",
            "lake_root": str(tmp_path / "lake"),
        }
    )
    ensure_topics(settings, [Topic.CAMPAIGN_INSTRUCTIONS])
    return settings


@pytest.fixture
def topic(settings) -> str:
    name = f"campaign-instructions-test-{uuid.uuid4().hex[:10]}"
    ensure_topics(settings, [name])
    return name


@pytest.fixture
def sessions(settings):
    engine = make_engine(settings)
    migrate(settings, engine)  # the ad manager migrates too; the test may read before it has
    yield make_session_factory(engine)
    engine.dispose()


class Outcomes:
    """What ``on_applied`` reported, per instruction id, in order."""

    def __init__(self) -> None:
        self.by_instruction: dict[str, list[str]] = defaultdict(list)

    def __call__(self, instruction: CampaignInstruction, result: store.ApplyResult) -> None:
        self.by_instruction[instruction.instruction_id].append(str(result.outcome))


class RunningAdManager:
    """``ad_manager.run`` in a thread, as the service would run it."""

    def __init__(
        self,
        settings: Settings,
        on_applied: ad_manager.OnApplied | None = None,
        topic: str = Topic.CAMPAIGN_INSTRUCTIONS,
    ) -> None:
        self.stop_event = threading.Event()
        self.stats: ad_manager.AdManagerStats | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(settings, on_applied, topic), daemon=True)
        self.thread.start()

    def _run(self, settings: Settings, on_applied: ad_manager.OnApplied | None, topic: str) -> None:
        try:
            self.stats = ad_manager.run(settings, self.stop_event, on_applied, topic=topic)
        except BaseException as exc:
            self.error = exc

    def stop(self, timeout_s: float = 60) -> ad_manager.AdManagerStats:
        self.stop_event.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the ad manager did not stop"
        assert self.error is None, self.error
        assert self.stats is not None
        return self.stats


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def publish_raw(settings: Settings, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = make_producer(settings, value_serializer=None)
    for key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush(timeout=30)
    producer.close()


def committed_offset(settings: Settings, partition: int, topic: str = Topic.CAMPAIGN_INSTRUCTIONS) -> int | None:
    group = ConsumerGroupTopicPartitions(settings.ad_manager_group, [TopicPartition(topic, partition)])
    admin = wait_for_broker(settings)  # held until the answer is in: it is the client that receives it
    (answer,) = admin.list_consumer_group_offsets([group]).values()
    (committed,) = answer.result(timeout=30).topic_partitions
    return None if committed.offset < 0 else committed.offset


def test_instructions_are_applied_once_and_bad_records_are_quarantined(settings, topic, sessions):
    tag = uuid.uuid4().hex[:10]
    create_a = campaigns.create_instruction(spec(bid_micros=400_000), now=NOW, campaign_id=f"a-{tag}")
    create_b = campaigns.create_instruction(spec(pricing_model="CPM"), now=NOW, campaign_id=f"b-{tag}")
    stop_b = campaigns.stop_instruction(f"b-{tag}", now=NOW)
    stop_ghost = campaigns.stop_instruction(f"ghost-{tag}", now=NOW)
    create_a_again = campaigns.create_instruction(spec(bid_micros=9_000_000), now=NOW, campaign_id=f"a-{tag}")
    acks = campaigns.publish_instructions(
        settings, [create_a, create_b, stop_b, stop_ghost, create_a, create_a_again], topic=topic
    )  # create_a twice: a replay
    mismatched = campaigns.create_instruction(spec(), now=NOW, campaign_id=f"mismatch-{tag}")
    no_campaign = {**create_a.model_dump(mode="json"), "campaign": None, "campaign_id": f"nospec-{tag}"}
    negative_bid = create_a.model_dump(mode="json")
    negative_bid["campaign"]["bid_micros"] = -5
    negative_bid["campaign_id"] = f"negative-{tag}"
    huge_budget = create_a.model_dump(mode="json")  # `--budget 1e20`: past the store's 64-bit integers
    huge_budget["campaign"]["total_budget_micros"] = huge_budget["campaign"]["daily_budget_micros"] = 10**26
    huge_budget["campaign_id"] = f"huge-{tag}"
    publish_raw(
        settings,
        topic,
        [
            (f"json-{tag}".encode(), b'{"instruction_id": "broken' + tag.encode()),
            (f"nospec-{tag}".encode(), json.dumps(no_campaign).encode()),
            (f"negative-{tag}".encode(), json.dumps(negative_bid).encode()),
            (f"huge-{tag}".encode(), json.dumps(huge_budget).encode()),
            (f"other-{tag}".encode(), mismatched.model_dump_json().encode()),
            (f"tombstone-{tag}".encode(), None),
            (b"\xff\xfe", b"\xff\xfe" + tag.encode()),
        ],
    )
    outcomes = Outcomes()
    manager = RunningAdManager(settings, outcomes, topic)

    def ours_quarantined() -> list[store.QuarantinedRecord]:
        with sessions() as session:
            return [
                record
                for record in store.quarantined_instructions(session)
                if tag.encode() in (record.key or b"") + (record.raw_value or b"")
            ]

    wait_until(lambda: len(ours_quarantined()) == 7 and create_a_again.instruction_id in outcomes.by_instruction, "all")
    stats = manager.stop()

    assert outcomes.by_instruction[create_a.instruction_id] == ["created", "already applied"]
    assert outcomes.by_instruction[create_b.instruction_id] == ["created"]
    assert outcomes.by_instruction[stop_b.instruction_id] == ["stopped"]
    assert outcomes.by_instruction[stop_ghost.instruction_id] == ["unknown campaign"]
    assert outcomes.by_instruction[create_a_again.instruction_id] == ["campaign exists"]
    with sessions() as session:
        a, b = store.get_campaign(session, f"a-{tag}"), store.get_campaign(session, f"b-{tag}")
        assert (a.status, a.spec.bid_micros, a.last_instruction_id) == ("active", 400_000, create_a.instruction_id)
        assert (b.status, b.last_instruction_id) == (CampaignStatus.STOPPED, stop_b.instruction_id)
        for never_created in ("ghost", "mismatch", "nospec", "negative", "huge"):
            assert store.get_campaign(session, f"{never_created}-{tag}") is None

    reasons = {(record.key or b"").decode(errors="replace"): record.reason for record in ours_quarantined()}
    assert "Invalid JSON" in reasons[f"json-{tag}"]
    assert "a create instruction needs the campaign" in reasons[f"nospec-{tag}"]
    assert "campaign.bid_micros" in reasons[f"negative-{tag}"]
    assert "campaign.total_budget_micros" in reasons[f"huge-{tag}"]
    assert f"is not the campaign_id 'mismatch-{tag}'" in reasons[f"other-{tag}"]
    assert reasons[f"tombstone-{tag}"] == "empty record (no value)"
    assert "Invalid JSON" in reasons["\ufffd\ufffd"]
    assert all(record.topic == topic and record.offset >= 0 for record in ours_quarantined())
    assert stats.outcomes == {
        "created": 2,
        "stopped": 1,
        "unknown campaign": 1,
        "already applied": 1,
        "campaign exists": 1,
        "quarantined": 7,
    }
    assert stats.quarantined == 7 and stats.batches_committed >= 1
    # Offsets were committed past every record once the store had them.
    for ack in acks:
        assert committed_offset(settings, ack.partition, topic) > ack.offset


class SimulatedCrash(RuntimeError):
    pass


def test_a_crash_between_store_commit_and_offset_commit_replays_as_a_no_op(settings, topic, sessions):
    tag = uuid.uuid4().hex[:10]
    create = campaigns.create_instruction(spec(), now=NOW, campaign_id=f"crash-{tag}")
    stop = campaigns.stop_instruction(f"crash-{tag}", now=NOW)
    _, stop_ack = campaigns.publish_instructions(settings, [create, stop], topic=topic)

    def crash_after_the_stop(instruction: CampaignInstruction, result: store.ApplyResult) -> None:
        if instruction.instruction_id == stop.instruction_id:
            raise SimulatedCrash("killed after the store commit, before the offset commit")

    first = RunningAdManager(settings, crash_after_the_stop, topic)
    first.thread.join(90)
    assert isinstance(first.error, SimulatedCrash)
    committed = committed_offset(settings, stop_ack.partition, topic)
    assert committed is None or committed <= stop_ack.offset  # the stop's offset was not committed
    with sessions() as session:
        after_crash = store.get_campaign(session, f"crash-{tag}")
    assert (after_crash.status, after_crash.last_instruction_id) == (CampaignStatus.STOPPED, stop.instruction_id)

    outcomes = Outcomes()
    second = RunningAdManager(settings, outcomes, topic)
    wait_until(lambda: stop.instruction_id in outcomes.by_instruction, "the replayed stop")
    second.stop()
    assert outcomes.by_instruction[stop.instruction_id] == ["already applied"]
    assert outcomes.by_instruction.get(create.instruction_id, ["already applied"]) == ["already applied"]
    with sessions() as session:
        assert store.get_campaign(session, f"crash-{tag}") == after_crash
    assert committed_offset(settings, stop_ack.partition, topic) > stop_ack.offset


def test_the_health_check_reads_the_heartbeat_age(tmp_path):
    import os
    import time

    from auction_service.campaign_store.ad_manager import heartbeat_file, is_alive
    from tests.conftest import make_settings

    settings = make_settings(tmp_path)
    assert not is_alive(settings)  # never ran
    beat = heartbeat_file(settings)
    beat.parent.mkdir(parents=True)
    beat.touch()
    assert is_alive(settings)
    old = time.time() - 120
    os.utime(beat, (old, old))
    assert not is_alive(settings)  # a stuck loop stops beating
