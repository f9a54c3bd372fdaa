"""What one auction-service process holds between requests, and the housekeeping thread that keeps it fresh.

- the champion model (hot-swapped by ``ModelWatcher``) and the serving features;
- the bid-request filter (``bid-filter@champion``, hot-swapped by its ``BidFilterSlot``; None until one exists);
- the active campaigns, reloaded from the store when its change marker or the UTC day moves;
- the shared books every replica uses: reservations, spend, frequency, served auctions
  (``auction_service.serving.shared``), and this replica's copy of their exposure, refreshed each tick;
- served auctions, also written behind to the campaign store in batches, so events are validated
  after the shared store's window without a database write per auction.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Generic, TypeVar

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from adstream.days import UTC_DAYS, DayClock
from adstream.messaging import AckedProducer, BrokerUnavailable, JsonProducer, LogProducer, make_producer
from adstream.settings import Settings
from adstream.signing import EventSigner
from auction_service.campaign_store import journal, store
from auction_service.campaign_store.db import make_engine, make_session_factory, migrate
from auction_service.domain import ServingCampaign
from auction_service.serving.bid_filter import BidFilterSlot
from auction_service.serving.books import AuctionStats, ExposureBook
from auction_service.serving.callers import CallerKeys
from auction_service.serving.champion import ModelWatcher, ServingModel
from auction_service.serving.decisions import DecisionBook
from auction_service.serving.features import FeatureStore
from auction_service.serving.ivt import RequestIvt
from auction_service.serving.metrics import ServiceMetrics
from auction_service.serving.pacer import Pacer
from auction_service.serving.pacing import PPM, PacingController
from auction_service.serving.shared import SharedBooks, SharedStoreUnavailable, rebuild_source
from ml.calibration import PRICING_MODELS, ColdStart
from ml.traffic_curve import traffic_counts

log = logging.getLogger(__name__)
T, R = TypeVar("T"), TypeVar("R")
FEATURE_RELOAD_EVERY = 40  # housekeeping ticks (about 10 s at the default 250 ms)
# An event batch not acknowledged by then answers 503 (retry): it is journaled, and the relay or the
# retry publishes it; with the producer's report slack the 503 comes within 5 s.
PUBLISH_TIMEOUT_S = 2.5
# A campaign request answers 503 within 5 s when Kafka is away: making the producer gives up after 2 s, and
# an instruction unacknowledged after 3 s is settled at librdkafka's next timeout scan, within a second.
INSTRUCTION_CONNECT_TIMEOUT_S = 2.0
READINESS_TTL_S = 1.0
INSTRUCTION_ACK_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class CampaignSnapshot:
    campaigns: tuple[ServingCampaign, ...]
    by_id: dict[str, ServingCampaign]
    marker: tuple[int, int] | None
    day: Any  # the budget day it was loaded for (``adstream.days``)
    loaded_at: datetime
    revisions: dict[str, int] = field(default_factory=dict)  # of the campaigns, as they were loaded


def _snapshot(
    campaigns: list[ServingCampaign], marker: tuple[int, int] | None, now: datetime, revisions: dict[str, int],
    day: Any = None,
) -> CampaignSnapshot:  # fmt: skip
    return CampaignSnapshot(tuple(campaigns), {c.campaign_id: c for c in campaigns}, marker, day, now, revisions)


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

    def __init__(self, sessions: sessionmaker[Session], min_click_delay: timedelta, days: DayClock = UTC_DAYS) -> None:
        super().__init__(sessions)
        self.min_click_delay = min_click_delay
        self.days = days
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
                return journal.record_events(
                    session, items, min_click_delay=self.min_click_delay, published=acked,
                    days=self.days,
                )  # fmt: skip
        except BaseException:
            self._acked.extend(acked)  # marked in a later write, or republished: both harmless
            raise


@dataclass
class ServiceState:
    settings: Settings
    sessions: sessionmaker[Session]
    model: ServingModel
    features: FeatureStore
    producer: JsonProducer | None  # campaign instructions: sends that wait for the ack
    auction_log: LogProducer | None = None  # the auctions topic: one record per auction, not waited for
    feedback_log: AckedProducer | None = None  # ad-feedback: each batch waits for the acks
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    stats: AuctionStats = field(default_factory=AuctionStats)
    exposure: ExposureBook = field(default_factory=ExposureBook)
    campaigns: CampaignSnapshot = field(default_factory=lambda: _snapshot([], None, datetime.now(UTC), {}))
    watcher: ModelWatcher | None = None
    _unwritten: list[store.ServedAuctionRow] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # One flush at a time: a caller's flush returns once what was queued before it is stored, even when the
    # housekeeping thread took that batch first and is still writing it.
    _flushing: threading.Lock = field(default_factory=threading.Lock)
    # Held by an auction while it reads the snapshot and the exposure, and by a reload while it swaps
    # them: an auction sees both before or both after.
    snapshot_lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _dependencies: dict[str, str] = field(default_factory=dict)
    _checked_at: float = float("-inf")
    spend_ledger: EventJournal = field(init=False)  # events journaled and charged, in group commits
    signer: EventSigner = field(init=False)  # signs the event URLs of served ads, verifies their events
    request_ivt: RequestIvt = field(init=False)  # GIVT by user agent and address
    caller_keys: CallerKeys = field(init=False)  # the auction callers' API keys in force, reloaded in the background
    shared: SharedBooks = field(init=False)  # what every replica shares: reservations, spend, frequency, auctions
    pacer: Pacer = field(init=False)  # the pacing controllers (one replica at a time) and their multipliers
    spent_today_mirror: dict[str, int] = field(default_factory=dict)  # the shared store's spend today, last read
    pacing_draws: np.random.Generator = field(default_factory=np.random.default_rng)  # throttling's coin (loop only)
    cold_start: ColdStart = field(init=False)  # prior matching of served pCTRs until an online map (loop only)
    bid_filter: BidFilterSlot = field(init=False)  # bid-filter@champion (None until one exists), hot-swapped

    def __post_init__(self) -> None:
        self.shared = SharedBooks(
            self.settings.shared_store_url, namespace=self.settings.shared_store_namespace,
            timeout_s=self.settings.shared_store_timeout_s, served_s=self.settings.served_in_memory_s,
            auction_ttl_s=self.settings.auction_ttl_s, days=DayClock.of(self.settings),
        )  # fmt: skip
        self.spend_ledger = EventJournal(
            self.sessions, timedelta(milliseconds=self.settings.ivt_min_click_delay_ms),
            DayClock.of(self.settings),
        )  # fmt: skip
        self.signer = EventSigner.from_settings(self.settings)
        self.request_ivt = RequestIvt.from_settings(self.settings)
        self.caller_keys = CallerKeys(self.sessions)
        self.cold_start = ColdStart(self.settings.ctr_prior)
        self.pacer = Pacer(
            self.shared.client, self.settings.shared_store_namespace,
            PacingController.of(DayClock.of(self.settings)), self.settings.pacing_update_s,
            curve_source=partial(traffic_counts, self.settings),
        )  # fmt: skip
        self.decisions = DecisionBook(self.shared.client, self.settings.shared_store_namespace)
        self.bid_filter = BidFilterSlot(self.settings, self.metrics.bid_filter)

    # --- lifecycle ---

    @classmethod
    def open(cls, settings: Settings, *, producer: JsonProducer | None = None) -> ServiceState:
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
        state.bid_filter = BidFilterSlot.load_at_start(settings, state.metrics.bid_filter)
        state.refresh_campaigns(force=True)
        try:
            state.ensure_shared_built()
        except SharedStoreUnavailable as exc:  # serving answers 503 until it is back; housekeeping retries
            log.error("auction service without its shared store: %s", exc)
        return state

    def start(self) -> None:
        self.auction_log = LogProducer(
            self.settings,
            client_id="auction-service-log",
            on_lost=self.metrics.log_record_lost,
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
        self.metrics.model_watch.watcher = self.watcher
        self.watcher.start()
        self.bid_filter.start()
        self._thread = threading.Thread(target=self._housekeeping, name="auction-housekeeping", daemon=True)
        self._thread.start()

    def instruction_producer(self) -> JsonProducer:
        """The producer of campaign instructions, made on first use (so a broker back after a start without
        it is found); ``BrokerUnavailable`` when the broker does not answer within ``INSTRUCTION_CONNECT_TIMEOUT_S``."""
        if self.producer is None:
            self.producer = make_producer(
                self.settings,
                client_id="auction-service",
                connect_timeout_s=INSTRUCTION_CONNECT_TIMEOUT_S,
                # Settled (acknowledged or failed) by the time the request answers.
                message_timeout_ms=int(INSTRUCTION_ACK_TIMEOUT_S * 1000),
            )
        return self.producer

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.watcher is not None:
            self.watcher.stop()
        self.bid_filter.stop()
        self.flush_served()
        self.shared.close()
        if self.auction_log is not None:
            self.auction_log.flush(10)
        if self.feedback_log is not None:
            self.feedback_log.close(10)
        if self.producer is not None:
            self.producer.close(timeout=10)

    def _housekeeping(self) -> None:
        tick = 0
        while not self._stop.wait(self.settings.campaign_refresh_s):
            tick += 1
            try:
                now = datetime.now(UTC)
                self.refresh_campaigns()
                self.flush_served()
                self.refresh_shared(now)
                self.pace(now)
                self.decisions.read()
                if self.auction_log is not None:
                    self.auction_log.poll()
                if tick % FEATURE_RELOAD_EVERY == 0:
                    self.features.reload_if_changed()
                self.metrics.model_version.set(float(self.model.version or 0))
                calibration = self.model.calibration
                if calibration is not None:
                    self.metrics.calibration_slope.set(calibration.slope)
                    self.metrics.calibration_intercept.set(calibration.intercept)
                    for model, offset in zip(PRICING_MODELS, calibration.offsets, strict=False):
                        self.metrics.calibration_offset.labels(pricing_model=model).set(offset)
            except Exception:  # a failed tick must not end the thread; the next one retries
                log.exception("auction housekeeping failed")

    # --- readiness ---

    def dependencies(self) -> dict[str, str]:
        """ "ok", or why not, for the campaign store and the ad-feedback producer's broker; checked at most
        every ``READINESS_TTL_S`` so that a probe storm costs the store and the broker nothing."""
        now = time.monotonic()
        if now - self._checked_at > READINESS_TTL_S:
            self._dependencies = {
                "store": self._store_state(),
                "shared_store": self.shared.ping(),
                "kafka": self._kafka_state(),
            }
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
        """Reloads the active campaigns when the store changed or a new budget day began."""
        now = datetime.now(UTC)
        days = DayClock.of(self.settings)
        day = days.budget_day(now)
        current = self.campaigns
        with self.sessions() as session:
            marker = store.campaign_change_marker(session)
            if not force and marker == current.marker and day == current.day:
                return False
            revisions = store.serving_revisions(session, now)
            if force or day != current.day or revisions.keys() != current.revisions.keys():
                campaigns = store.serving_campaigns(session, now, days=days)
            else:
                # Mostly a charge or two since the last load: read back only the campaigns they changed.
                changed = [cid for cid, revision in revisions.items() if current.revisions[cid] != revision]
                fresh = {c.campaign_id: c for c in store.serving_campaigns(session, now, changed, days=days)}
                campaigns = [fresh.get(c.campaign_id, c) for c in current.campaigns]
        with self.snapshot_lock:
            self.campaigns = _snapshot(campaigns, marker, now, revisions, day)
        self.metrics.campaigns_serving.set(len(campaigns))
        return True

    # --- the shared store ---

    def ensure_shared_built(self) -> bool:
        """Rebuilds the shared store from the campaign store when it lost its state; True if this replica did."""
        if self.shared.built():
            return False
        with self.sessions() as session:  # open while the rebuild streams its rows
            source = rebuild_source(session, datetime.now(UTC), self.settings.auction_ttl_s, DayClock.of(self.settings))
            rebuilt = self.shared.rebuild(source)
        if rebuilt:
            log.warning("the shared store had no state: rebuilt it from the campaign store")
        return rebuilt

    def refresh_shared(self, now: datetime) -> None:
        """Frees expired reservations (anyone's: a replica killed leaves its own), rebuilds a lost store,
        and copies the exposure every auction's pre-filter reads."""
        self.shared.sweep(now)
        self.ensure_shared_built()
        held, held_today, spent, spent_today = self.shared.exposure(DayClock.of(self.settings).budget_day(now))
        self.spent_today_mirror = spent_today
        snapshot = self.campaigns
        exposure = {}
        for campaign in snapshot.campaigns:
            cid = campaign.campaign_id
            # What the snapshot does not show yet: charges since it was loaded, on top of the reservations.
            total = held.get(cid, 0) + max(0, spent.get(cid, 0) - campaign.spent_micros)
            today = held_today.get(cid, 0) + max(0, spent_today.get(cid, 0) - campaign.spent_today_micros)
            exposure[cid] = max(total, today)
        with self.snapshot_lock:
            if self.campaigns is snapshot:
                self.exposure.replace(exposure)

    # --- pacing ---

    def pace(self, now: datetime) -> None:
        """The pacing controllers' turn (``Pacer.tick``: an update every PACING_UPDATE_S by the lease holder)
        and this replica's copy of the multipliers."""
        snapshot = self.campaigns
        if snapshot.day != DayClock.of(self.settings).budget_day(now):
            # The campaigns' spend today is of another budget day (a reload is due or failed): the controllers
            # would read yesterday's spend as today's and hold every campaign back for the day.
            return
        changes = self.pacer.serve_changes
        if self.pacer.tick(now, snapshot.campaigns, self.spent_today_mirror):
            self.metrics.pacing_updates.inc()
        self.metrics.pacing_leader.set(1 if self.pacer.is_leader else 0)
        if self.pacer.serve_changes != changes:
            for campaign_id, (lambda_ppm, throttle_ppm) in self.pacer.serving.items():
                self.metrics.pacing_multiplier.labels(campaign_id=campaign_id).set(lambda_ppm / PPM)
                self.metrics.pacing_throttle.labels(campaign_id=campaign_id).set(throttle_ppm / PPM)

    # --- served auctions ---

    def remember_served(self, row: store.ServedAuctionRow) -> None:
        """Queues a served auction for the campaign store (the shared store has it already)."""
        with self._lock:
            self._unwritten.append(row)

    def served_auctions_shared(self, auction_ids: list[str]) -> dict[str, store.ServedAuctionRow | None]:
        """The auctions the shared store still holds (served within SERVED_IN_MEMORY_S, by any replica)."""
        return self.shared.served(auction_ids)

    def served_in_campaign_store(self, auction_ids: list[str]) -> dict[str, store.ServedAuctionRow | None]:
        """Auctions served before the shared store's window, from their copy written behind (blocking)."""
        with self.sessions() as session:
            return {auction_id: store.served_auction(session, auction_id) for auction_id in auction_ids}

    def served_auction(self, auction_id: str) -> store.ServedAuctionRow | None:
        """From the shared store, else the campaign store."""
        row = self.served_auctions_shared([auction_id])[auction_id]
        return row if row is not None else self.served_in_campaign_store([auction_id])[auction_id]

    def flush_served(self) -> int:
        with self._flushing:
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
