"""Kafka clients configured the one way AdStream uses them.

Producers are idempotent with ``acks=all`` so a retried send never duplicates
a record on the broker; consumers commit by hand so a record is acknowledged
only after its effect is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import confluent_kafka
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


def _librdkafka_producer(settings: Settings, client_id: str, config: dict[str, Any]) -> confluent_kafka.Producer:
    """An idempotent, acks=all librdkafka producer; ``config`` adds or overrides its settings."""
    return confluent_kafka.Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "client.id": client_id,
            "enable.idempotence": True,
            "acks": "all",
            "error_cb": _TransportErrors(),
            # Connection failures also arrive through error_cb, deduplicated; not on stderr each retry.
            "log_level": 2,
            **config,
        }
    )


class _TransportErrors:
    """Logs librdkafka's transport errors once per change: they repeat every few seconds while a broker is away."""

    def __init__(self) -> None:
        self._last = ""

    def __call__(self, error: confluent_kafka.KafkaError) -> None:
        if error.str() != self._last:
            self._last = error.str()
            logging.getLogger(__name__).warning("Kafka (librdkafka): %s", error.str())


class LogProducer:
    """Fire-and-forget producer for a high-rate log (the auction log), on librdkafka.

    kafka-python's sender is pure Python and shares the GIL with the caller: publishing each
    auction took about half of the auction service's CPU (``make bench-auction``: 690 auctions/s
    with it, 1,305 without). librdkafka batches and sends from its own threads outside the GIL.
    Still idempotent with acks=all. ``send`` never blocks or raises: a record the local queue
    cannot take, or one not delivered within ``timeout_ms`` (the broker is down), is reported to
    ``on_lost``. Delivery reports arrive in ``poll``/``flush``, which the owner calls regularly.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client_id: str,
        on_lost: Callable[[str], None],
        queue_max: int = 100_000,
        timeout_ms: int = 120_000,
    ) -> None:
        self._on_lost = on_lost
        self._producer = _librdkafka_producer(
            settings,
            client_id,
            {
                # Fewer, larger batches: the broker shares the machine, and every produce request
                # costs it CPU (0.4 of a core at 5 ms batches and 1,000 records/s; 0.15 at 50 ms).
                "linger.ms": 50,
                # Reports only for losses: one Python callback per record is GIL time on the request path.
                "delivery.report.only.error": True,
                "on_delivery": self._delivered,
                "queue.buffering.max.messages": queue_max,
                "message.timeout.ms": timeout_ms,
            },
        )

    def send(self, topic: str, key: str, value: bytes) -> None:
        try:
            self._producer.produce(topic, value, key)
        except BufferError:
            self._on_lost("local queue full")
        except confluent_kafka.KafkaException as exc:
            self._on_lost(str(exc))

    def poll(self) -> int:
        """Serves waiting delivery reports; the number served."""
        return self._producer.poll(0)

    def flush(self, timeout_s: float) -> int:
        """Waits up to ``timeout_s`` for every record to be delivered; the number still undelivered."""
        return self._producer.flush(timeout_s)

    def _delivered(self, error: confluent_kafka.KafkaError | None, _message: object) -> None:
        if error is not None:
            self._on_lost(error.str())


class PublishFailed(RuntimeError):
    """The broker did not acknowledge every record of a send in time; the message says why."""


class AckedProducer:
    """A producer whose ``publish`` returns once the broker acknowledged every record (the feedback events).

    On librdkafka, like ``LogProducer``: kafka-python's pure-Python sender cost the auction
    service more CPU per event than the rest of the event path. ``publish`` is awaited on the
    caller's event loop, so a request waiting for its acks holds no thread. A record's fate is
    settled within ``timeout_s`` (librdkafka's message timeout): ``publish`` waits a little
    longer for the last report, so when it raises no record of the call can reach the topic
    later. Delivery reports are served by a thread of the producer's own.
    """

    REPORT_SLACK_S = 2.0

    def __init__(self, settings: Settings, *, client_id: str, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self._producer = _librdkafka_producer(
            settings, client_id, {"linger.ms": 2, "message.timeout.ms": int(timeout_s * 1000)}
        )
        self._closed = threading.Event()
        self._reports = threading.Thread(target=self._serve_reports, name=f"{client_id}-reports", daemon=True)
        self._reports.start()

    async def publish(self, topic: str, records: Sequence[tuple[str, bytes]]) -> None:
        """Sends (key, value) records and waits for every acknowledgement; ``PublishFailed`` otherwise."""
        if not records:
            return
        loop = asyncio.get_running_loop()
        settled: asyncio.Future[None] = loop.create_future()
        failures: list[str] = []
        pending = len(records)

        def delivered(error: confluent_kafka.KafkaError | None, _message: object) -> None:
            # Runs in the reports thread, the only one that serves reports until close().
            nonlocal pending
            if error is not None:
                failures.append(error.str())
            pending -= 1
            if not pending:
                with contextlib.suppress(RuntimeError):  # the caller's loop is gone: nobody waits
                    loop.call_soon_threadsafe(_settle, settled)

        for key, value in records:
            try:
                self._producer.produce(topic, value, key, on_delivery=delivered)
            except (BufferError, confluent_kafka.KafkaException) as exc:
                # Those already queued settle on their own; the caller retries them all (idempotent).
                raise PublishFailed(f"the producer's queue refused a record ({exc})") from exc
        try:
            await asyncio.wait_for(settled, self.timeout_s + self.REPORT_SLACK_S)
        except TimeoutError as exc:
            raise PublishFailed(f"no acknowledgement within {self.timeout_s:g} s") from exc
        if failures:
            raise PublishFailed(f"{len(failures)} of {len(records)} records not delivered: {failures[0]}")

    def unreachable(self, timeout_s: float = 1.0) -> str | None:
        """None when a broker answers a metadata request within ``timeout_s``, else why not (readiness)."""
        try:
            self._producer.list_topics(timeout=timeout_s)
        except confluent_kafka.KafkaException as exc:
            return f"no Kafka broker answers ({exc.args[0].str() if exc.args else exc})"
        return None

    def close(self, timeout_s: float = 10.0) -> None:
        self._closed.set()
        self._reports.join(timeout=timeout_s)
        self._producer.flush(timeout_s)

    def _serve_reports(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


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
