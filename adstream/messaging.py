"""Kafka clients configured the one way AdStream uses them, all on librdkafka (``confluent-kafka``).

Producers are idempotent with ``acks=all`` so a retried send never duplicates
a record on the broker; consumers commit by hand so a record is acknowledged
only after its effect is stored. Settings passed as keywords are librdkafka's, with
underscores for dots (``linger_ms=50`` is ``linger.ms``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import confluent_kafka
from confluent_kafka.admin import AdminClient, NewTopic

from adstream.settings import Settings

# librdkafka settles a timed-out record at its next timeout scan (about once a second): wait that long
# past ``message.timeout.ms`` for the report, so a send that gives up leaves none of its records queued.
REPORT_SLACK_S = 2.0


class BrokerUnavailable(RuntimeError):
    """The Kafka bootstrap servers did not answer in time."""


def encode_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str).encode()


def decode_json(raw: bytes) -> Any:
    return json.loads(raw.decode())


def make_producer(
    settings: Settings,
    *,
    client_id: str = "adstream",
    value_serializer: Callable[[Any], bytes] | None = encode_json,
    connect_timeout_s: float | None = None,
    **config: Any,
) -> JsonProducer:
    """An idempotent, acks=all producer of JSON values (raw bytes with ``value_serializer=None``).

    ``connect_timeout_s``: ``BrokerUnavailable`` unless a broker answers a metadata request within it
    (librdkafka itself connects lazily and would only fail the first send).
    """
    defaults = {
        "linger.ms": 5,
        # The Java client's key hashing: a key keeps the partition its earlier records have, whichever
        # client wrote them, so a campaign's instructions stay in order.
        "partitioner": "murmur2_random",
    }
    producer = JsonProducer(settings, client_id, value_serializer, {**defaults, **_librdkafka_names(config)})
    if connect_timeout_s is not None and producer.unreachable(connect_timeout_s):
        raise BrokerUnavailable(_unreachable(settings))
    return producer


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """Where the broker stored an acknowledged record."""

    topic: str
    partition: int
    offset: int


class Delivery:
    """The fate of one sent record; ``get`` waits for its acknowledgement, serving the producer's reports meanwhile."""

    def __init__(self, producer: confluent_kafka.Producer) -> None:
        self._producer = producer
        self.acknowledged: Acknowledged | None = None
        self.error: str | None = None

    def report(self, error: confluent_kafka.KafkaError | None, message: confluent_kafka.Message) -> None:
        if error is not None:
            self.error = error.str()
        else:
            self.acknowledged = Acknowledged(message.topic(), message.partition(), message.offset())

    def get(self, timeout: float = 30.0) -> Acknowledged:
        """The acknowledgement; ``PublishFailed`` when the record was not delivered or not within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while self.acknowledged is None and self.error is None and (left := deadline - time.monotonic()) > 0:
            self._producer.poll(min(left, 0.1))
        if self.acknowledged is not None:
            return self.acknowledged
        raise PublishFailed(self.error or f"no acknowledgement within {timeout:g} s")


class JsonProducer:
    """Keyed records to any topic; ``send`` queues one, ``send_all`` returns once the broker acknowledged them all."""

    def __init__(
        self,
        settings: Settings,
        client_id: str,
        value_serializer: Callable[[Any], bytes] | None,
        config: dict[str, Any],
    ) -> None:
        self.config = _librdkafka_config(settings, client_id, config)
        self._producer = confluent_kafka.Producer(self.config)
        self._serialize = value_serializer

    def send(self, topic: str, key: str | bytes | None = None, value: Any = None, *, timestamp_ms: int = 0) -> Delivery:
        """Queues a record (``timestamp_ms`` 0: now); ``PublishFailed`` when the local queue refuses it."""
        delivery = Delivery(self._producer)
        payload = self._serialize(value) if self._serialize is not None and value is not None else value
        try:
            self._producer.produce(topic, payload, key, on_delivery=delivery.report, timestamp=timestamp_ms)
        except (BufferError, confluent_kafka.KafkaException) as exc:
            raise PublishFailed(f"the producer's queue refused a record ({exc})") from exc
        self._producer.poll(0)  # serves reports already in, so a long run of sends keeps no backlog of them
        return delivery

    def send_all(self, topic: str, records: Iterable[tuple[str, Any]], timeout_s: float) -> list[Acknowledged]:
        """Sends (key, value) records; their acknowledgements in order, or ``PublishFailed`` after ``timeout_s``."""
        deliveries = [self.send(topic, key, value) for key, value in records]
        # Each record's own report, not a flush of every record queued: with ``message.timeout.ms`` at most
        # ``timeout_s`` a record unacknowledged by then is settled (failed) when this raises.
        deadline = time.monotonic() + timeout_s + REPORT_SLACK_S
        return [delivery.get(max(deadline - time.monotonic(), 0.0)) for delivery in deliveries]

    def flush(self, timeout: float = 30.0) -> int:
        """Waits up to ``timeout`` s for every queued record; the number still undelivered."""
        return self._producer.flush(timeout)

    def unreachable(self, timeout_s: float = 1.0) -> str | None:
        """None when a broker answers a metadata request within ``timeout_s``, else why not."""
        return _metadata_error(self._producer, timeout_s)

    def close(self, timeout: float = 10.0) -> None:
        """Delivers what is queued, for up to ``timeout`` s (librdkafka has nothing else to close)."""
        if undelivered := self._producer.flush(timeout):
            logging.getLogger(__name__).warning("producer closed with %d records undelivered", undelivered)


def _librdkafka_names(config: dict[str, Any]) -> dict[str, Any]:
    """``linger_ms`` as ``linger.ms``; the client's callbacks (``error_cb``, ``on_delivery``) keep their names."""
    return {
        name if name.endswith("_cb") or name.startswith("on_") else name.replace("_", "."): value
        for name, value in config.items()
    }


def _librdkafka_config(settings: Settings, client_id: str, config: dict[str, Any]) -> dict[str, Any]:
    """An idempotent, acks=all producer's settings; ``config`` adds or overrides."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        "error_cb": _TransportErrors(),
        # Connection failures also arrive through error_cb, deduplicated; not on stderr each retry.
        "log_level": 2,
        **config,
    }


def _librdkafka_producer(settings: Settings, client_id: str, config: dict[str, Any]) -> confluent_kafka.Producer:
    return confluent_kafka.Producer(_librdkafka_config(settings, client_id, config))


def _metadata_error(client: confluent_kafka.Producer | AdminClient, timeout_s: float) -> str | None:
    try:
        client.list_topics(timeout=timeout_s)
    except confluent_kafka.KafkaException as exc:
        return f"no Kafka broker answers ({exc.args[0].str() if exc.args else exc})"
    return None


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

    librdkafka batches and sends from its own threads outside the GIL; a pure-Python sender sharing
    the GIL took about half of the auction service's CPU (``make bench-auction``: 690 auctions/s
    with it, 1,305 without). Still idempotent with acks=all. ``send`` never blocks or raises: a record the local queue
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

    On librdkafka, like ``LogProducer``: a pure-Python sender cost the auction service more CPU
    per event than the rest of the event path. ``publish`` is awaited on the caller's event loop,
    so a request waiting for its acks holds no thread. A record's fate is settled within
    ``timeout_s`` (librdkafka's message timeout): ``publish`` waits a little longer for the last
    report, so when it raises nothing of the call is still queued (a record that was in flight may
    have been stored; events are idempotent by id). Delivery reports are served by a thread of
    the producer's own.
    """

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
            await asyncio.wait_for(settled, self.timeout_s + REPORT_SLACK_S)
        except TimeoutError as exc:
            raise PublishFailed(f"no acknowledgement within {self.timeout_s:g} s") from exc
        if failures:
            raise PublishFailed(f"{len(failures)} of {len(records)} records not delivered: {failures[0]}")

    def unreachable(self, timeout_s: float = 1.0) -> str | None:
        """None when a broker answers a metadata request within ``timeout_s``, else why not (readiness)."""
        return _metadata_error(self._producer, timeout_s)

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


class CommitFailed(RuntimeError):
    """The offsets were not committed (the group rebalanced, or the broker did not answer); the records replay."""


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed record, key and value decoded as the consumer was asked to."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: Any
    value: Any


def _decode_key(raw: bytes) -> str:
    return raw.decode()


def make_consumer(
    settings: Settings,
    group_id: str | None,
    *topics: str,
    key_deserializer: Callable[[bytes], Any] | None = _decode_key,
    value_deserializer: Callable[[bytes], Any] | None = decode_json,
    consumer_timeout_ms: int | None = None,
    **config: Any,
) -> JsonConsumer:
    """A consumer that commits by hand, subscribed to ``topics`` (none: the caller assigns partitions).

    ``group_id`` None: no group; such a consumer must not commit. A deserializer None leaves raw bytes.
    ``consumer_timeout_ms``: iterating over the consumer ends after that long without a record.
    """
    librdkafka = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        # librdkafka wants a group even from a consumer that only assigns; it never joins nor commits with it.
        "group.id": group_id or f"adstream-no-group-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "error_cb": _TransportErrors(),
        "log_level": 2,
        **_librdkafka_names(config),
    }
    consumer = JsonConsumer(librdkafka, key_deserializer, value_deserializer, consumer_timeout_ms)
    if topics:
        consumer.subscribe(topics)
    return consumer


class JsonConsumer:
    """``poll`` returns decoded records; ``commit`` stores the position of every record returned so far."""

    def __init__(
        self,
        config: dict[str, Any],
        key_deserializer: Callable[[bytes], Any] | None,
        value_deserializer: Callable[[bytes], Any] | None,
        consumer_timeout_ms: int | None,
    ) -> None:
        self._consumer = confluent_kafka.Consumer(config)
        self._key = key_deserializer
        self._value = value_deserializer
        self._idle_timeout_s = (consumer_timeout_ms or 0) / 1000 or float("inf")
        # Where reading starts in partitions not read from yet (None: unknown): positions tell only after a read.
        self._first_offsets: dict[tuple[str, int], int | None] = {}

    def subscribe(self, topics: Iterable[str]) -> None:
        self._consumer.subscribe(list(topics), on_assign=self._assigned, on_revoke=self._revoked)

    def poll(self, timeout_s: float, max_records: int = 500) -> list[Record]:
        """Up to ``max_records`` records, as soon as one is there; waits up to ``timeout_s`` for the first."""
        # librdkafka's consume() waits out its whole timeout unless max_records arrive, so the first message
        # comes from poll() and the rest already fetched from consume(timeout=0): 2,101 instructions read with a
        # commit per batch took 0.54 s with consume(500, 0.5), 0.036 s this way (medians of 3, one local broker).
        first = self._consumer.poll(timeout_s)
        if first is None:
            return []
        messages = [first, *self._consumer.consume(max_records - 1, 0)] if max_records > 1 else [first]
        return [record for message in messages if (record := self._record(message)) is not None]

    def __iter__(self) -> Iterator[Record]:
        idle_since = time.monotonic()
        while (left := self._idle_timeout_s - (time.monotonic() - idle_since)) > 0:
            message = self._consumer.poll(min(left, 1.0))
            if message is not None and (record := self._record(message)) is not None:
                yield record
                idle_since = time.monotonic()

    def commit(self) -> None:
        """Commits the position after every record returned so far; ``CommitFailed`` when the broker refuses."""
        try:
            self._consumer.commit(asynchronous=False)
        except confluent_kafka.KafkaException as exc:
            error = exc.args[0]  # a KafkaError
            if error.code() == confluent_kafka.KafkaError._NO_OFFSET:
                return  # nothing read since the last commit
            raise CommitFailed(error.str()) from exc

    def assignment(self) -> list[confluent_kafka.TopicPartition]:
        return self._consumer.assignment()

    def lag(self, unprocessed: Sequence[Record] = ()) -> dict[tuple[str, int], int]:
        """(topic, partition) -> records behind the end of the partition, for the assigned partitions.

        From the high watermark the last fetch reported, so it asks the broker nothing (but a partition's
        committed offset, once, before anything of it is read); a partition not fetched yet is left out.
        ``unprocessed``: records returned but not handled yet, still counted as behind, as Kafka counts a
        group's lag from its committed offsets.
        """
        assigned = self._consumer.assignment()
        first_unprocessed: dict[tuple[str, int], int] = {}
        for record in unprocessed:
            first_unprocessed.setdefault((record.topic, record.partition), record.offset)
        lag = {}
        for tp in self._consumer.position(assigned) if assigned else []:
            _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high < 0:
                continue
            key = (tp.topic, tp.partition)
            start = first_unprocessed.get(key)
            if start is None:
                start = tp.offset if tp.offset >= 0 else self._first_offset(tp)
            if start is not None:
                lag[key] = max(0, high - start)
        return lag

    def assign_from_time(self, topic: str, timestamp_ms: int, timeout_s: float = 10.0) -> None:
        """Assigns every partition of ``topic``, each from its first record at or after ``timestamp_ms``
        (from its end when it has none)."""
        partitions = sorted(self._consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions)
        wanted = [confluent_kafka.TopicPartition(topic, p, timestamp_ms) for p in partitions]
        found = self._offsets_for_times(wanted, timeout_s) if wanted else []
        starts = []
        for tp in found:
            offset = tp.offset
            if offset < 0:  # offsets_for_times answers -1 where no record is that recent: the end
                offset = self._consumer.get_watermark_offsets(tp, timeout=timeout_s)[1]
            starts.append(confluent_kafka.TopicPartition(tp.topic, tp.partition, offset))
            self._first_offsets[(tp.topic, tp.partition)] = offset
        self._consumer.assign(starts)

    def _offsets_for_times(self, wanted: list, timeout_s: float) -> list:
        """``offsets_for_times``, asked again while the broker answers a retriable error (a topic just created
        has no partition leader for a moment) until ``timeout_s`` has passed."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                found = self._consumer.offsets_for_times(wanted, timeout=max(0.1, deadline - time.monotonic()))
            except confluent_kafka.KafkaException as exc:
                error = exc.args[0]
            else:  # a partition may fail alone, and would otherwise read as "no record that recent"
                error = next((tp.error for tp in found if tp.error is not None), None)
                if error is None:
                    return found
            if not (error.retriable() or error.code() in _NO_LEADER_YET) or time.monotonic() >= deadline:
                raise confluent_kafka.KafkaException(error)
            time.sleep(0.2)

    def close(self) -> None:
        """Leaves the group; commits nothing (offsets move only through ``commit``)."""
        self._consumer.close()

    def _record(self, message: confluent_kafka.Message) -> Record | None:
        if (error := message.error()) is not None:
            if error.fatal():
                raise confluent_kafka.KafkaException(error)
            logging.getLogger(__name__).warning("Kafka consumer: %s", error.str())
            return None
        key, value = message.key(), message.value()
        kind, timestamp_ms = message.timestamp()
        return Record(
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            timestamp_ms=timestamp_ms if kind != confluent_kafka.TIMESTAMP_NOT_AVAILABLE else None,
            key=self._key(key) if self._key is not None and key is not None else key,
            value=self._value(value) if self._value is not None and value is not None else value,
        )

    def _first_offset(self, tp: confluent_kafka.TopicPartition) -> int | None:
        """The committed offset of a partition nothing was read from yet (asked once per assignment)."""
        key = (tp.topic, tp.partition)
        if key not in self._first_offsets:
            try:
                (committed,) = self._consumer.committed([confluent_kafka.TopicPartition(tp.topic, tp.partition)], 5.0)
            except confluent_kafka.KafkaException:
                return None  # asked again at the next poll
            self._first_offsets[key] = committed.offset if committed.offset >= 0 else None
        return self._first_offsets[key]

    def _assigned(self, _consumer: confluent_kafka.Consumer, _partitions: list) -> None:
        self._first_offsets.clear()

    def _revoked(self, _consumer: confluent_kafka.Consumer, _partitions: list) -> None:
        self._first_offsets.clear()


_NO_LEADER_YET = (
    confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION,
    confluent_kafka.KafkaError.LEADER_NOT_AVAILABLE,
    confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART,
)


def read_to_end(
    settings: Settings, topic: str, timeout_s: float = 60.0, *, value_deserializer: Callable[[bytes], Any] | None = None
) -> list[Record]:
    """Every record of ``topic`` up to its current end (none when it does not exist), read without a group."""
    consumer = make_consumer(settings, None, key_deserializer=None, value_deserializer=value_deserializer)
    try:
        metadata = consumer._consumer.list_topics(timeout=timeout_s)
        if topic not in metadata.topics:
            return []
        ends = {}
        for partition in sorted(metadata.topics[topic].partitions):
            tp = confluent_kafka.TopicPartition(topic, partition)
            low, high = consumer._consumer.get_watermark_offsets(tp, timeout=timeout_s)
            if high > low:
                ends[partition] = (low, high)
        consumer._consumer.assign([confluent_kafka.TopicPartition(topic, p, low) for p, (low, _) in ends.items()])
        records: list[Record] = []
        deadline = time.monotonic() + timeout_s
        read_to = {partition: low for partition, (low, _) in ends.items()}
        while any(read_to[p] < high for p, (_, high) in ends.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end in {timeout_s:.0f} s")
            records.extend(consumer.poll(0.5))
            # The consumer's position, not the last record's offset + 1: offsets may have gaps (compaction).
            for tp in consumer._consumer.position([confluent_kafka.TopicPartition(topic, p) for p in read_to]):
                if tp.offset >= 0:
                    read_to[tp.partition] = tp.offset
        return records
    finally:
        consumer.close()


def ensure_topics(settings: Settings, topics: Iterable[str], partitions: int = 3) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    admin = wait_for_broker(settings)
    try:
        missing = set(topics) - set(admin.list_topics(timeout=30).topics)
        if not missing:
            return
        created = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in sorted(missing)],
            operation_timeout=30,
        )
        for future in created.values():
            try:
                future.result(timeout=30)
            except confluent_kafka.KafkaException as exc:
                # Another client may create one concurrently; the goal is met either way.
                if exc.args[0].code() != confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    except (confluent_kafka.KafkaException, TimeoutError) as exc:  # the broker left after it answered
        raise BrokerUnavailable(f"{_unreachable(settings)} (creating topics: {exc})") from exc


def wait_for_broker(settings: Settings, timeout_s: float = 30.0) -> AdminClient:
    """An admin client once the broker answers metadata requests; ``BrokerUnavailable`` after ``timeout_s``."""
    admin = AdminClient(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "error_cb": _TransportErrors(), "log_level": 2}
    )
    # librdkafka retries the connection itself within the timeout.
    if error := _metadata_error(admin, timeout_s):
        raise BrokerUnavailable(f"{_unreachable(settings)} (last error: {error})")
    return admin


def _unreachable(settings: Settings) -> str:
    return (
        f"no Kafka broker answers at {settings.kafka_bootstrap_servers}; start one with "
        "`make up` or set KAFKA_BOOTSTRAP_SERVERS"
    )
