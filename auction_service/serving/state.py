"""What one auction-service process holds between requests, and the housekeeping thread that keeps it fresh.

- the champion model (hot-swapped by ``ModelWatcher``) and the serving features;
- the active campaigns, reloaded from the store when its change marker or the UTC day moves;
- the books: in-flight exposure, frequency, stats (``auction_service.serving.books``);
- served auctions: kept in memory for their TTL and written behind to the store in batches,
  so events can be validated after a restart without a database write per auction.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from kafka import KafkaProducer
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from adstream.messaging import AckedProducer, BrokerUnavailable, LogProducer, make_producer
from adstream.settings import Settings
from adstream.signing import EventSigner
from auction_service.campaign_store import journal, store
from auction_service.campaign_store.db import make_engine, make_session_factory, migrate
from auction_service.domain import ServingCampaign
from auction_service.serving.books import AuctionStats, ExposureBook, FrequencyBook
from auction_service.serving.callers import CallerKeys
from auction_service.serving.champion import ModelWatcher, ServingModel
from auction_service.serving.features import FeatureStore
from auction_service.serving.ivt import RequestIvt
from auction_service.serving.metrics import ServiceMetrics

log = logging.getLogger(__name__)
T, R = TypeVar("T"), TypeVar("R")
FEATURE_RELOAD_EVERY = 40  # housekeeping ticks (about 10 s at the default 250 ms)
# An event batch not acknowledged by then answers 503 (retry): it is journaled, and the relay or the
# retry publishes it; with the producer's report slack the 503 comes within 5 s.
PUBLISH_TIMEOUT_S = 2.5
# A campaign request answers 503 within 5 s when Kafka is away: its producer's bootstrap or metadata wait
# gives up after 2 s, an unacknowledged instruction after 4 s (the two do not add up: a send without
# metadata fails before any ack wait).
INSTRUCTION_CONNECT_TIMEOUT_S = 2.0
READINESS_TTL_S = 1.0
INSTRUCTION_ACK_TIMEOUT_S = 4.0


@dataclass(frozen=True)
class CampaignSnapshot:
    campaigns: tuple[ServingCampaign, ...]
    by_id: dict[str, ServingCampaign]
    marker: tuple[int, int] | None
    day: Any  # the UTC date it was loaded for
    loaded_at: datetime
    revisions: dict[str, int] = field(default_factory=dict)  # of the campaigns, as they were loaded


def _snapshot(
    campaigns: list[ServingCampaign], marker: tuple[int, int] | None, now: datetime, revisions: dict[str, int]
) -> CampaignSnapshot:
    return CampaignSnapshot(tuple(campaigns), {c.campaign_id: c for c in campaigns}, marker, now.date(), now, revisions)


class GroupCommit(Generic[T, R]):
    """Items of concurrent requests, written to the store together: one transaction per write.

    A lone request's items are written at once. Items that arrive while a write is in flight
    wait for the next one, so its commit is shared by all of them (a group commit): at a few
    hundred events a second, a transaction each would take a core.
    """

    MAX_CHARGES_PER_WRITE = 500

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._queued: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, items: list[T]) -> list[R]:
        """A result per item, once its transaction committed; a failed write raises in every caller it held."""
        loop = asyncio.get_running_loop()
        results = [loop.create_future() for _ in items]
        self._queued.extend(zip(items, results, strict=True))
        if self._writer is None:
            self._writer = loop.create_task(self._write_queued())
        return list(await asyncio.gather(*results))

    async def _write_queued(self) -> None:
        try:
            while self._queued:
                size = self.MAX_CHARGES_PER_WRITE
                batch, self._queued = self._queued[:size], self._queued[size:]
                try:
                    # The store's transactions wait on disk and locks: a thread, off the event loop.
                    written = await asyncio.to_thread(self._write, [item for item, _ in batch])
                except Exception as exc:
                    for _, result in batch:
                        if not result.done():  # a caller that went away cancelled its own
                            result.set_exception(exc)
                    continue
                for (_, result), outcome in zip(batch, written, strict=True):
                    if not result.done():
                        result.set_result(outcome)
        finally:
            self._writer = None

    def _write(self, items: list[T]) -> list[R]:
        raise NotImplementedError


class SpendLedger(GroupCommit[store.Charge, store.SpendResult]):
    """Charges alone (``store.record_spends``), in group commits."""

    def _write(self, items: list[store.Charge]) -> list[store.SpendResult]:
        with self._sessions() as session:
            return store.record_spends(session, items)


class EventJournal(GroupCommit[journal.JournalEntry, journal.JournalResult]):
    """Events journaled and charged (``journal.record_events``), in group commits.

    The ids Kafka acknowledged since the last write are marked published in the next one, so
    marking costs no transaction of its own; ids lost to a crash are published again by the relay.
    """

    def __init__(self, sessions: sessionmaker[Session], min_click_delay: timedelta) -> None:
        super().__init__(sessions)
        self.min_click_delay = min_click_delay
        self._acked: list[str] = []

    def acknowledged(self, event_ids: list[str]) -> None:
        self._acked.extend(event_ids)

    def take_acknowledged(self) -> list[str]:
        acked, self._acked = self._acked, []
        return acked

    def _write(self, items: list[journal.JournalEntry]) -> list[journal.JournalResult]:
        acked = self.take_acknowledged()
        try:
            with self._sessions() as session:
                return journal.record_events(session, items, min_click_delay=self.min_click_delay, published=acked)
        except BaseException:
            self._acked.extend(acked)  # marked in a later write, or republished: both harmless
            raise


@dataclass
class ServiceState:
    settings: Settings
    sessions: sessionmaker[Session]
    model: ServingModel
    features: FeatureStore
    producer: KafkaProducer | None  # campaign instructions: sends that wait for the ack
    auction_log: LogProducer | None = None  # the auctions topic: one record per auction, not waited for
    feedback_log: AckedProducer | None = None  # ad-feedback: each batch waits for the acks
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    stats: AuctionStats = field(default_factory=AuctionStats)
    exposure: ExposureBook = field(default_factory=ExposureBook)
    frequency: FrequencyBook = field(default_factory=FrequencyBook)
    campaigns: CampaignSnapshot = field(default_factory=lambda: _snapshot([], None, datetime.now(UTC), {}))
    watcher: ModelWatcher | None = None
    served: dict[str, tuple] = field(default_factory=dict)  # auction id -> ServedAuctionRow.packed()
    _served_order: deque[tuple[datetime, str]] = field(default_factory=deque)
    _unwritten: list[store.ServedAuctionRow] = field(default_factory=list)
    _charged: list[str] = field(default_factory=list)  # auctions billed since the last campaign reload
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Held by an auction while it reads the snapshot and the reservations, and by a reload while it
    # swaps the snapshot and frees the charged reservations: an auction sees both before or both after.
    snapshot_lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _dependencies: dict[str, str] = field(default_factory=dict)
    _checked_at: float = float("-inf")
    spend_ledger: EventJournal = field(init=False)  # events journaled and charged, in group commits
    signer: EventSigner = field(init=False)  # signs the event URLs of served ads, verifies their events
    request_ivt: RequestIvt = field(init=False)  # GIVT by user agent and address
    caller_keys: CallerKeys = field(init=False)  # the auction callers' API keys in force, reloaded in the background

    def __post_init__(self) -> None:
        self.spend_ledger = EventJournal(self.sessions, timedelta(milliseconds=self.settings.ivt_min_click_delay_ms))
        self.signer = EventSigner.from_settings(self.settings)
        self.request_ivt = RequestIvt.from_settings(self.settings)
        self.caller_keys = CallerKeys(self.sessions)

    # --- lifecycle ---

    @classmethod
    def open(cls, settings: Settings, *, producer: KafkaProducer | None = None) -> ServiceState:
        """Migrates the store, loads the champion (or the last good copy), features and campaigns."""
        engine = make_engine(settings)
        migrate(settings, engine)
        state = cls(
            settings=settings,
            sessions=make_session_factory(engine),
            model=ServingModel.load_at_start(settings),
            features=FeatureStore.load(settings),
            producer=producer,
        )
        state.refresh_campaigns(force=True)
        return state

    def start(self) -> None:
        self.auction_log = LogProducer(
            self.settings,
            client_id="auction-service-log",
            on_lost=lambda _reason: self.metrics.auctions.labels(outcome="unlogged").inc(),
        )
        self.feedback_log = AckedProducer(
            self.settings, client_id="auction-service-feedback", timeout_s=PUBLISH_TIMEOUT_S
        )
        if self.producer is None:
            try:
                self.instruction_producer()
            except BrokerUnavailable as exc:
                # Auctions still serve; campaign requests answer 503 (retry) and make a producer once it is back.
                log.error("auction service without Kafka: %s", exc)
        self.watcher = ModelWatcher(self.settings, self.model)
        self.watcher.start()
        self._thread = threading.Thread(target=self._housekeeping, name="auction-housekeeping", daemon=True)
        self._thread.start()

    def instruction_producer(self) -> KafkaProducer:
        """The producer of campaign instructions, made on first use (so a broker back after a start without
        it is found); ``BrokerUnavailable`` when the broker does not answer within ``INSTRUCTION_CONNECT_TIMEOUT_S``."""
        if self.producer is None:
            self.producer = make_producer(
                self.settings,
                client_id="auction-service",
                max_block_ms=int(INSTRUCTION_CONNECT_TIMEOUT_S * 1000),
                bootstrap_timeout_ms=int(INSTRUCTION_CONNECT_TIMEOUT_S * 1000),
            )
        return self.producer

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.watcher is not None:
            self.watcher.stop()
        self.flush_served()
        if self.auction_log is not None:
            self.auction_log.flush(10)
        if self.feedback_log is not None:
            self.feedback_log.close(10)
        if self.producer is not None:
            self.producer.flush(timeout=10)
            self.producer.close(timeout=10)

    def _housekeeping(self) -> None:
        tick = 0
        while not self._stop.wait(self.settings.campaign_refresh_s):
            tick += 1
            try:
                now = datetime.now(UTC)
                self.refresh_campaigns()
                self.exposure.expire(now)
                self.forget_expired(now)
                self.flush_served()
                if self.auction_log is not None:
                    self.auction_log.poll()
                if tick % FEATURE_RELOAD_EVERY == 0:
                    self.features.reload_if_changed()
                self.metrics.model_version.set(float(self.model.version or 0))
            except Exception:  # a failed tick must not end the thread; the next one retries
                log.exception("auction housekeeping failed")

    # --- readiness ---

    def dependencies(self) -> dict[str, str]:
        """ "ok", or why not, for the campaign store and the ad-feedback producer's broker; checked at most
        every ``READINESS_TTL_S`` so that a probe storm costs the store and the broker nothing."""
        now = time.monotonic()
        if now - self._checked_at > READINESS_TTL_S:
            self._dependencies = {"store": self._store_state(), "kafka": self._kafka_state()}
            self._checked_at = now
        return self._dependencies

    def _store_state(self) -> str:
        try:
            with self.sessions() as session:
                session.execute(select(1))
        except SQLAlchemyError as exc:
            return f"the campaign store does not answer ({exc.__class__.__name__})"
        return "ok"

    def _kafka_state(self) -> str:
        if self.feedback_log is None:
            return "no producer: the service was not started"
        return self.feedback_log.unreachable() or "ok"

    # --- campaigns ---

    def refresh_campaigns(self, force: bool = False) -> bool:
        """Reloads the active campaigns when the store changed or a new UTC day began.

        Then frees the reservations of the auctions charged before the reload: the new snapshot's
        spend now covers them.
        """
        now = datetime.now(UTC)
        with self._lock:
            charged, self._charged = self._charged, []
        current = self.campaigns
        try:
            with self.sessions() as session:
                marker = store.campaign_change_marker(session)
                if not charged and not force and marker == current.marker and now.date() == current.day:
                    return False
                revisions = store.serving_revisions(session, now)
                if force or now.date() != current.day or revisions.keys() != current.revisions.keys():
                    campaigns = store.serving_campaigns(session, now)
                else:
                    # Mostly a charge or two since the last load: read back only the campaigns they changed.
                    changed = [cid for cid, revision in revisions.items() if current.revisions[cid] != revision]
                    fresh = {c.campaign_id: c for c in store.serving_campaigns(session, now, only=changed)}
                    campaigns = [fresh.get(c.campaign_id, c) for c in current.campaigns]
        except BaseException:
            with self._lock:
                self._charged[:0] = charged
            raise
        with self.snapshot_lock:
            self.campaigns = _snapshot(campaigns, marker, now, revisions)
            for auction_id in charged:
                self.exposure.release(auction_id)
        self.metrics.campaigns_serving.set(len(campaigns))
        return True

    def release_when_reloaded(self, auction_id: str) -> None:
        """Frees a charged auction's reservation at the next campaign reload, not now.

        The auction reads spend from the snapshot and reservations live: freeing the reservation
        at once would leave the charge counted nowhere until the reload, and the campaign would
        serve past its budget meanwhile.
        """
        with self._lock:
            self._charged.append(auction_id)

    # --- served auctions ---

    def remember_served(self, row: store.ServedAuctionRow) -> None:
        # In memory for the first served_in_memory_s of its TTL, when nearly all its events come:
        # an hour of auctions at a few hundred a second would be a gigabyte.
        in_memory = timedelta(seconds=self.settings.served_in_memory_s)
        with self._lock:
            self.served[row.auction_id] = row.packed()
            self._served_order.append((min(row.expires_at, row.served_at + in_memory), row.auction_id))
            self._unwritten.append(row)

    def served_in_memory(self, auction_id: str) -> store.ServedAuctionRow | None:
        packed = self.served.get(auction_id)
        return None if packed is None else store.ServedAuctionRow.unpacked(packed)

    def served_auction(self, auction_id: str) -> store.ServedAuctionRow | None:
        """From memory, else from the store (served longer ago, before a restart, or by another instance)."""
        row = self.served_in_memory(auction_id)
        if row is not None:
            return row
        with self.sessions() as session:
            return store.served_auction(session, auction_id)

    def flush_served(self) -> int:
        with self._lock:
            batch, self._unwritten = self._unwritten, []
        if not batch:
            return 0
        try:
            with self.sessions() as session:
                return store.record_served_auctions(session, batch)
        except BaseException:
            with self._lock:  # back in front of what came since: the next tick writes them
                self._unwritten[:0] = batch
            raise

    def forget_expired(self, now: datetime) -> None:
        """Drops auctions from memory once past their window (a little past it, so an event arriving
        right at expiry is judged by its own time); one the store has not got yet stays."""
        horizon = now - timedelta(seconds=60)
        with self._lock:
            unwritten = {row.auction_id for row in self._unwritten} if self._unwritten else set()
            while self._served_order and self._served_order[0][0] <= horizon:
                _, auction_id = self._served_order[0]
                row = self.served_in_memory(auction_id) if auction_id in unwritten else None
                if row is not None and row.expires_at > horizon:
                    break  # the store is behind: keep it (and all after it) findable
                self._served_order.popleft()
                self.served.pop(auction_id, None)
