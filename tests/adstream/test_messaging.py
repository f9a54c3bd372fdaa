"""Produce/consume round trips on the real KRaft broker."""

import uuid

import pytest

from adstream.messaging import BrokerUnavailable, ensure_topics, make_consumer, make_producer, wait_for_broker
from tests.conftest import free_port, make_settings

pytestmark = pytest.mark.slow


def test_idempotent_producer_round_trip_keeps_keys_values_and_order(kafka_settings):
    topic = f"roundtrip-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_settings, [topic], partitions=2)
    producer = make_producer(kafka_settings)
    assert producer.config["enable.idempotence"] is True
    assert producer.config["acks"] == "all"
    sent = [{"event_id": f"e{i}", "campaign_id": f"c{i % 2}", "seq": i} for i in range(200)]
    for event in sent:
        producer.send(topic, key=event["campaign_id"], value=event)
    producer.flush(timeout=30)
    producer.close()

    consumer = make_consumer(kafka_settings, f"group-{topic}", topic, consumer_timeout_ms=10_000)
    received = []
    for record in consumer:
        received.append((record.key, record.value))
        if len(received) == len(sent):
            break
    consumer.commit()
    consumer.close()

    assert sorted(value["event_id"] for _, value in received) == sorted(e["event_id"] for e in sent)
    assert all(key == value["campaign_id"] for key, value in received)
    for campaign in ("c0", "c1"):  # one key, one partition: order is kept
        seqs = [value["seq"] for key, value in received if key == campaign]
        assert seqs == sorted(seqs) and len(seqs) == 100


def test_a_committed_group_does_not_see_its_records_twice(kafka_settings):
    topic = f"commit-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_settings, [topic], partitions=1)
    producer = make_producer(kafka_settings)
    for i in range(10):
        producer.send(topic, key="k", value={"n": i})
    producer.flush(timeout=30)
    producer.close()

    def drain() -> list[int]:
        consumer = make_consumer(kafka_settings, "ad-manager-test", topic, consumer_timeout_ms=3_000)
        values = [record.value["n"] for record in consumer]
        consumer.commit()
        consumer.close()
        return values

    assert drain() == list(range(10))
    assert drain() == []


def test_ensure_topics_is_idempotent(kafka_settings):
    topic = f"twice-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_settings, [topic], partitions=3)
    ensure_topics(kafka_settings, [topic], partitions=3)
    topics = wait_for_broker(kafka_settings).list_topics(timeout=30).topics
    assert len(topics[topic].partitions) == 3


def test_no_broker_gives_an_error_naming_the_setting(tmp_path):
    settings = make_settings(tmp_path, kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    with pytest.raises(BrokerUnavailable, match="KAFKA_BOOTSTRAP_SERVERS"):
        wait_for_broker(settings, timeout_s=2)
