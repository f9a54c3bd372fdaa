"""The ad manager: applies ``campaign-instructions`` to the campaign store.

    adstream ad-manager

A Kafka consumer group (``AD_MANAGER_GROUP``). For each batch of records:
- a valid instruction is applied with ``store.apply_instruction``, in its own committed
  transaction; a replayed instruction_id is a no-op there;
- a record that is not a valid instruction (bad JSON, schema violation, key that is
  not its campaign_id) is quarantined in ``quarantined_instructions`` with the reason
  and its topic, partition and offset, counted and logged;
- the Kafka offsets are committed only after every record of the batch is stored.
A crash between the store commit and the offset commit replays those records, which
then change nothing. SIGTERM or SIGINT finishes the current batch, commits and exits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PrometheusCounter
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from adstream.contracts import Topic
from adstream.events import CampaignInstruction
from adstream.exporter import process_registry, serve
from adstream.messaging import CommitFailed, Record, ensure_topics, make_consumer
from adstream.settings import Settings
from auction_service.campaign_store import store
from auction_service.campaign_store.db import make_engine, make_session_factory, migrate

log = logging.getLogger(__name__)

POLL_TIMEOUT_S = 0.5  # how long a stop request may wait for the poll to return
MAX_BATCH = 500
HEARTBEAT_EVERY_S = 5.0
HEARTBEAT_MAX_AGE_S = 30.0
QUARANTINED = "quarantined"

OnApplied = Callable[[CampaignInstruction, store.ApplyResult], None]


class InvalidInstruction(ValueError):
    """A record of campaign-instructions that cannot be applied; the message is the quarantine reason."""


@dataclass
class AdManagerStats:
    """Records handled by one ``run``, by outcome (``created``, ``already applied``, ``quarantined``, …)."""

    outcomes: Counter[str] = field(default_factory=Counter)
    batches_committed: int = 0

    @property
    def quarantined(self) -> int:
        return self.outcomes[QUARANTINED]


class AdManagerMetrics:
    """The ad manager's metric families, served on BIND_HOST:AD_MANAGER_METRICS_PORT (``adstream.exporter``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else process_registry()
        r = self.registry
        self.lag = Gauge(
            "adstream_ad_manager_consumer_lag_records",
            "Instruction records not applied yet, per partition (from the broker's end offset at the last fetch)",
            ["topic", "partition"], registry=r,
        )  # fmt: skip
        # A batch is a few store transactions: milliseconds, or seconds when the store is locked or remote.
        self.batch_duration = Histogram(
            "adstream_ad_manager_batch_duration_seconds", "Time to apply one polled batch and commit its offsets",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0), registry=r,
        )  # fmt: skip
        self.records = PrometheusCounter(
            "adstream_ad_manager_records_total", "Instruction records handled, by outcome", ["outcome"], registry=r
        )

    def set_lag(self, lag: dict[tuple[str, int], int]) -> None:
        for (topic, partition), behind in lag.items():
            self.lag.labels(topic=topic, partition=str(partition)).set(behind)


def parse_instruction(key: bytes | None, value: bytes | None) -> CampaignInstruction:
    """The instruction a record carries, or ``InvalidInstruction`` saying what is wrong with it."""
    if value is None:
        raise InvalidInstruction("empty record (no value)")
    try:
        instruction = CampaignInstruction.model_validate_json(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'record'}: {error['msg']}" for error in exc.errors()
        )
        raise InvalidInstruction(f"not a valid campaign instruction: {problems}") from exc
    # Records of one campaign must share a partition, or a stop could overtake its create.
    if key != instruction.campaign_id.encode():
        shown = key.decode(errors="replace") if key is not None else None
        raise InvalidInstruction(f"record key {shown!r} is not the campaign_id {instruction.campaign_id!r}")
    return instruction


def handle_record(sessions: sessionmaker[Session], record: Record, on_applied: OnApplied | None = None) -> str:
    """Apply or quarantine one record; returns its outcome. Both paths commit to the store before returning."""
    try:
        instruction = parse_instruction(record.key, record.value)
    except InvalidInstruction as exc:
        log.warning("quarantined %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)
        with sessions() as session:
            store.quarantine_instruction(
                session,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                key=record.key,
                raw_value=record.value,
                reason=str(exc),
            )
        return QUARANTINED
    with sessions() as session:
        result = store.apply_instruction(session, instruction)
    log.info("%s %s %s: %s", instruction.action, instruction.campaign_id, instruction.instruction_id, result.outcome)
    if on_applied is not None:
        on_applied(instruction, result)
    return str(result.outcome)


def run(
    settings: Settings,
    stop_event: threading.Event,
    on_applied: OnApplied | None = None,
    *,
    topic: str = Topic.CAMPAIGN_INSTRUCTIONS,
) -> AdManagerStats:
    """Consume campaign-instructions until ``stop_event`` is set; returns what was done.

    ``on_applied(instruction, result)`` is called after each store commit and before the
    batch's offsets are committed (tests use it to crash in between). ``topic`` is for
    tests that must not leave malformed records on the shared topic. The metrics are served
    meanwhile when AD_MANAGER_METRICS_PORT is set.
    """
    engine = make_engine(settings)
    migrate(settings, engine)
    ensure_topics(settings, [topic])
    sessions = make_session_factory(engine)
    stats = AdManagerStats()
    # Raw bytes: a record that does not decode must reach the quarantine, not crash the poll.
    consumer = make_consumer(
        settings,
        settings.ad_manager_group,
        topic,
        value_deserializer=None,
        key_deserializer=None,
    )
    log.info("ad manager consuming %s as group %s", topic, settings.ad_manager_group)
    metrics = AdManagerMetrics()
    exporter = None
    try:
        exporter = serve(metrics.registry, settings.bind_host, settings.ad_manager_metrics_port, "ad manager")
        beat = heartbeat_file(settings)
        beat.parent.mkdir(parents=True, exist_ok=True)
        last_beat = 0.0
        while not stop_event.is_set():
            if time.monotonic() - last_beat >= HEARTBEAT_EVERY_S:
                beat.touch()  # health checks read its age: the loop is alive and polling
                last_beat = time.monotonic()
            records = consumer.poll(POLL_TIMEOUT_S, max_records=MAX_BATCH)
            metrics.set_lag(consumer.lag(records))
            if not records:
                continue
            began = time.perf_counter()
            for record in records:
                outcome = handle_record(sessions, record, on_applied)
                stats.outcomes[outcome] += 1
                metrics.records.labels(outcome=outcome.replace(" ", "_")).inc()
            try:
                consumer.commit()
                stats.batches_committed += 1
            except CommitFailed as exc:
                # The group rebalanced; the new owner replays these records, which the store ignores.
                log.warning("offset commit failed, records will be replayed: %s", exc)
            metrics.batch_duration.observe(time.perf_counter() - began)
            metrics.set_lag(consumer.lag())
    finally:
        consumer.close()  # commits nothing: offsets move only in the loop above, after the store
        engine.dispose()
        if exporter is not None:
            exporter.close()
    log.info("ad manager stopped: %s", dict(stats.outcomes))
    return stats


def heartbeat_file(settings: Settings) -> Path:
    return settings.local_dir.resolve() / "run" / "ad-manager.heartbeat"


def is_alive(settings: Settings, max_age_s: float = HEARTBEAT_MAX_AGE_S) -> bool:
    """Whether a running ad manager polled recently (its heartbeat file is fresh)."""
    beat = heartbeat_file(settings)
    return beat.exists() and time.time() - beat.stat().st_mtime <= max_age_s
