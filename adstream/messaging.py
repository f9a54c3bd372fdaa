"""Kafka clients configured the one way AdStream uses them.

Producers are idempotent with ``acks=all`` so a retried send never duplicates
a record on the broker; consumers commit by hand so a record is acknowledged
only after its effect is stored.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from adstream.settings import Settings


class BrokerUnavailable(RuntimeError):
    """The Kafka bootstrap servers did not answer in time."""


def encode_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str).encode()


def decode_json(raw: bytes) -> Any:
    return json.loads(raw.decode())


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
        "acks": "all",
        "enable_idempotence": True,
        "retries": 2**31 - 1,
        "linger_ms": 5,
        "key_serializer": lambda key: key.encode() if isinstance(key, str) else key,
        "value_serializer": encode_json,
    }
    config.update(overrides)
    try:
        return KafkaProducer(**config)
    except KafkaError as exc:
        raise BrokerUnavailable(_unreachable(settings)) from exc


def make_consumer(settings: Settings, group_id: str | None, *topics: str, **overrides: Any) -> KafkaConsumer:
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "value_deserializer": decode_json,
        "key_deserializer": lambda key: key.decode() if key is not None else None,
    }
    config.update(overrides)
    try:
        return KafkaConsumer(*topics, **config)
    except KafkaError as exc:
        raise BrokerUnavailable(_unreachable(settings)) from exc


def ensure_topics(settings: Settings, topics: Iterable[str], partitions: int = 3) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    admin = wait_for_broker(settings)
    try:
        missing = set(topics) - set(admin.list_topics())
        if not missing:
            return
        new = [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in sorted(missing)]
        # Another client may create one concurrently; the goal is met either way.
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics(new, raise_errors=True, wait_for_metadata=True)
    finally:
        admin.close()


def wait_for_broker(settings: Settings, timeout_s: float = 30.0) -> KafkaAdminClient:
    """An admin client once the broker answers metadata requests."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            budget_ms = max(500, int((deadline - time.monotonic()) * 1000))
            admin = KafkaAdminClient(
                bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
                request_timeout_ms=min(5000, budget_ms),
                bootstrap_timeout_ms=min(5000, budget_ms),
            )
            admin.list_topics()
            return admin
        except (KafkaError, OSError) as exc:
            last = exc
            time.sleep(0.5)
    raise BrokerUnavailable(f"{_unreachable(settings)} (last error: {last})")


def _unreachable(settings: Settings) -> str:
    return (
        f"no Kafka broker answers at {settings.kafka_bootstrap_servers}; start one with "
        "`make up` or set KAFKA_BOOTSTRAP_SERVERS"
    )
