"""The campaign optimizer service: live windows from Kafka, a decision every tick, applied to serving.

    adstream optimize [--once]

- **Reads** ``ad-feedback`` straight from Kafka (no consumer group: it assigns itself every partition),
  folding each delivered, valid event into its campaign x platform window (``optimizer.windows``):
  impressions, clicks, conversions, and the spend the ledger charged. On start it **rebuilds** the
  windows by seeking every partition to the window's start time (``offsets_for_times``), so a
  restart reproduces the windows it had, and the decisions with them, from the log alone.
- **Every** ``OPTIMIZER_TICK_S`` (2 s) it reads the campaigns with ``goals.optimize`` on from the campaign
  store, forecasts every campaign x platform at once (``optimizer.forecast``, the category priors
  pooled from the window) and decides (``optimizer.decide``). The work of a tick depends on the
  number of campaigns, not on the traffic.
- **Applies** a campaign's decision when it changed (a multiplier moved by more than
  ``CHANGE_PPM`` or a reason changed) or every ``REFRESH_S``: the ``CampaignDecision`` record goes to
  ``campaign-decisions`` (acknowledged), then the multipliers to the shared store
  (``adstream.decisions``), which every replica reads within its housekeeping tick. The record with
  its inputs and forecasts lands in ``gold/optimizer_decisions`` through the streaming job.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import redis

from adstream.contracts import Topic
from adstream.decisions import MULTIPLIER_SCALE, pack, serve_key, version_key
from adstream.events import (
    NOT_DELIVERED,
    PLATFORMS,
    CampaignDecision,
    ChargeStatus,
    EventType,
    PlatformDecision,
)
from auction_service.domain import ServingCampaign
from optimizer.decide import PRICING_CODES, Campaigns, Decision, Reason, decide
from optimizer.forecast import Beta, Forecast, Trend, forecast
from optimizer.windows import CLICKS, CONVERSIONS, IMPRESSIONS, SPEND, Windows, platform_of

log = logging.getLogger(__name__)

CHANGE_PPM = 20_000  # a multiplier moving less than 2 points is not a new decision
REFRESH_S = 60.0  # every decision is sent again this often, changed or not
ROUND_S = 60.0  # Thompson draws are made anew this often (decide's module docstring)
PRIOR_CTR, PRIOR_CVR = 0.03, 0.05  # the category priors' own prior, before the window holds anything
CATEGORY_PRIOR_STRENGTH = 1_000.0  # a category's pooled rate weighs as many trials against the above
EVENT_METRIC = {EventType.IMPRESSION.value: IMPRESSIONS, EventType.CLICK.value: CLICKS,
                EventType.CONVERSION.value: CONVERSIONS}  # fmt: skip


def event_values(events: Iterable[Mapping]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(campaign ids, platform indices, times in seconds, METRICS rows) of the delivered, valid events of
    ``events`` (``ad-feedback`` records as dicts): invalid traffic and undelivered events are left out,
    and only a charged event carries spend."""
    ids, platforms, times, rows = [], [], [], []
    for event in events:
        metric = EVENT_METRIC.get(event.get("event_type"))
        if metric is None or event.get("ivt_category") or event.get("charge_status") in NOT_DELIVERED:
            continue
        values = [0, 0, 0, 0]
        values[metric] = 1
        if event.get("charge_status") == ChargeStatus.CHARGED.value:
            values[SPEND] = int(event.get("cost_micros") or 0)
        at = event["event_time"]
        at = at.timestamp() if isinstance(at, datetime) else datetime.fromisoformat(at).timestamp()
        ids.append(event["campaign_id"])
        platforms.append(platform_of(event.get("channel"), event.get("device_type")))
        times.append(at)
        rows.append(values)
    return ids, np.array(platforms, dtype=np.int64), np.array(times, dtype=np.float64), np.array(rows, dtype=np.int64)


def category_priors(totals: np.ndarray, categories: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each campaign's CTR and CVR prior: its category's pooled rates over the window (every platform of
    every campaign of the category), themselves shrunk toward PRIOR_CTR and PRIOR_CVR."""
    by_category: dict[str, np.ndarray] = {}
    for row, category in enumerate(categories):
        by_category[category] = by_category.get(category, 0) + totals[row].sum(axis=0)
    ctr, cvr = np.empty(len(categories)), np.empty(len(categories))
    for row, category in enumerate(categories):
        pooled = by_category[category]
        k = CATEGORY_PRIOR_STRENGTH
        ctr[row] = (pooled[CLICKS] + PRIOR_CTR * k) / (pooled[IMPRESSIONS] + k)
        cvr[row] = (pooled[CONVERSIONS] + PRIOR_CVR * k) / (pooled[CLICKS] + k)
    return ctr, cvr


def campaign_arrays(campaigns: Sequence[ServingCampaign]) -> Campaigns:
    n = len(campaigns)
    limits = np.full((n, len(PLATFORMS)), np.inf)
    for row, campaign in enumerate(campaigns):
        for platform, limit in campaign.goals.platform_bid_limits_micros.items():
            limits[row, PLATFORMS.index(platform)] = limit
    return Campaigns(
        pricing=np.array([PRICING_CODES[str(c.pricing_model)] for c in campaigns], dtype=np.int64),
        bid_micros=np.array([c.bid_micros for c in campaigns], dtype=np.int64),
        value_micros=np.array([c.goals.value_micros for c in campaigns], dtype=np.int64),
        optimize=np.array([c.goals.optimize for c in campaigns], dtype=bool),
        max_bid_micros=np.array(
            [np.inf if c.goals.max_bid_micros is None else c.goals.max_bid_micros for c in campaigns]
        ),
        platform_limit_micros=limits,
    )


def decision_records(
    campaigns: Sequence[ServingCampaign],
    decision: Decision,
    predicted: Forecast,
    *,
    now: datetime,
    window_start: datetime,
) -> list[CampaignDecision]:
    """One ``CampaignDecision`` per campaign (rows aligned with ``decision`` and ``predicted``)."""
    version = int(now.timestamp() * 1_000_000)
    records = []
    for row, campaign in enumerate(campaigns):
        platforms = []
        for column, platform in enumerate(PLATFORMS):

            def cell(array: np.ndarray, row: int = row, column: int = column) -> float | None:
                value = float(array[row, column])
                return None if np.isnan(value) else value

            platforms.append(
                PlatformDecision(
                    platform=platform,
                    multiplier=round(float(decision.multiplier[row, column]), 6),
                    reason=Reason(int(decision.reason[row, column])).name.lower(),
                    impressions=int(predicted.impressions[row, column]),
                    clicks=int(predicted.clicks[row, column]),
                    conversions=int(predicted.conversions[row, column]),
                    spend_micros=int(predicted.spend_micros[row, column]),
                    ctr=float(predicted.ctr.mean[row, column]),
                    cvr=float(predicted.cvr.mean[row, column]),
                    cvr_drawn=float(decision.cvr_drawn[row, column]),
                    ctr_trend_per_bucket=float(predicted.ctr_trend.slope[row, column]),
                    cvr_trend_per_bucket=float(predicted.cvr_trend.slope[row, column]),
                    cpc_micros=cell(decision.cpc_micros),
                    roi_per_click_micros=cell(decision.roi_per_click_micros),
                    p_losing=float(np.clip(decision.p_losing[row, column], 0.0, 1.0)),
                )
            )
        records.append(
            CampaignDecision(
                decision_id=f"{campaign.campaign_id}:{version}",
                campaign_id=campaign.campaign_id,
                version=version,
                decided_at=now,
                window_start=window_start,
                value_micros=campaign.goals.value_micros,
                base_bid_micros=campaign.bid_micros,
                platforms=platforms,
            )
        )
    return records


def multipliers_ppm(decision: Decision) -> np.ndarray:
    return np.rint(decision.multiplier * MULTIPLIER_SCALE).astype(np.int64)


@dataclass
class Sent:
    """What was last applied for a campaign: to send only what changed."""

    multipliers_ppm: np.ndarray
    reasons: np.ndarray
    at_s: float


def round_quantiles(campaign_id: str, round_index: int) -> np.ndarray:
    """The uniform numbers a campaign's CTR and CVR draws invert in one round (2 x platforms): derived from the
    campaign and the round alone, so a restart on the same data draws the same."""
    seed = int.from_bytes(hashlib.blake2b(f"{campaign_id}:{round_index}".encode(), digest_size=8).digest(), "big")
    return np.random.default_rng(seed).uniform(size=(2, len(PLATFORMS)))


@dataclass
class Optimizer:
    """The windows and the last decisions applied; ``fold`` events in, ``tick`` to decide (module docstring)."""

    windows: Windows = field(default_factory=Windows)
    round_s: float = ROUND_S
    sent: dict[str, Sent] = field(default_factory=dict)
    _quantiles: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)
    ticks: int = 0
    tick_seconds: list[float] = field(default_factory=list)

    def fold(self, events: Iterable[Mapping]) -> int:
        ids, platforms, times, values = event_values(events)
        return self.windows.add(ids, platforms, times, values) if ids else 0

    def tick(self, campaigns: Sequence[ServingCampaign], now: datetime) -> list[tuple[CampaignDecision, np.ndarray]]:
        """Decides for ``campaigns`` (those with optimize on) and returns the decisions to apply, each with
        its multipliers in millionths."""
        began = time.perf_counter()
        self.windows.advance(now.timestamp())
        campaigns = [c for c in campaigns if c.goals.optimize]
        if not campaigns:
            return []
        rows = np.array([self.windows.row_of(c.campaign_id) for c in campaigns], dtype=np.int64)
        ordered = self.windows.ordered(rows)
        prior_ctr, prior_cvr = category_priors(ordered.sum(axis=-1), [c.category for c in campaigns])
        predicted = forecast(ordered, prior_ctr, prior_cvr)
        decision = decide(campaign_arrays(campaigns), predicted, self.quantiles(campaigns, now))
        ppm = multipliers_ppm(decision)
        now_s = now.timestamp()
        changed = []
        for row, campaign in enumerate(campaigns):
            last = self.sent.get(campaign.campaign_id)
            if (
                last is None
                or now_s - last.at_s >= REFRESH_S
                or np.abs(last.multipliers_ppm - ppm[row]).max() > CHANGE_PPM
                or (last.reasons != decision.reason[row]).any()
            ):
                changed.append(row)
        window_start = datetime.fromtimestamp(
            (self.windows.latest_bucket - self.windows.buckets + 1) * self.windows.bucket_s, UTC
        )
        picked = [campaigns[row] for row in changed]
        sub = Decision(*(getattr(decision, f)[changed] for f in Decision.__dataclass_fields__))
        sub_forecast = _rows(predicted, np.array(changed, dtype=np.int64))
        records = decision_records(picked, sub, sub_forecast, now=now, window_start=window_start)
        self.ticks += 1
        self.tick_seconds.append(time.perf_counter() - began)
        del self.tick_seconds[:-1000]
        return [(record, ppm[row]) for record, row in zip(records, changed, strict=True)]

    def quantiles(self, campaigns: Sequence[ServingCampaign], now: datetime) -> np.ndarray:
        """(2, campaigns, platforms): each campaign's numbers of the current round (``round_quantiles``)."""
        round_index = int(now.timestamp() // self.round_s)
        out = np.empty((2, len(campaigns), len(PLATFORMS)))
        for row, campaign in enumerate(campaigns):
            held = self._quantiles.get(campaign.campaign_id)
            if held is None or held[0] != round_index:
                held = self._quantiles[campaign.campaign_id] = (
                    round_index,
                    round_quantiles(campaign.campaign_id, round_index),
                )
            out[:, row] = held[1]
        return out

    def mark_sent(self, applied: Sequence[tuple[CampaignDecision, np.ndarray]]) -> None:
        for record, ppm in applied:
            reasons = np.array([Reason[p.reason.upper()] for p in record.platforms], dtype=np.int8)
            self.sent[record.campaign_id] = Sent(ppm, reasons, record.decided_at.timestamp())


def _rows(predicted: Forecast, rows: np.ndarray) -> Forecast:
    """The forecast of ``rows`` only (every array's first axis)."""

    def beta(b: Beta) -> Beta:
        return Beta(b.alpha[rows], b.beta[rows])

    def trend(t: Trend) -> Trend:
        return Trend(t.level[rows], t.slope[rows])

    return Forecast(
        ctr=beta(predicted.ctr), cvr=beta(predicted.cvr), ctr_trend=trend(predicted.ctr_trend),
        cvr_trend=trend(predicted.cvr_trend), cpc_micros=predicted.cpc_micros[rows],
        cpc_trend=trend(predicted.cpc_trend), impressions=predicted.impressions[rows],
        clicks=predicted.clicks[rows], conversions=predicted.conversions[rows],
        spend_micros=predicted.spend_micros[rows],
    )  # fmt: skip


def apply_decisions(
    applied: Sequence[tuple[CampaignDecision, np.ndarray]],
    *,
    publish,  # callable(list[CampaignDecision]) -> None, raising when the broker did not acknowledge
    shared: redis.Redis,
    namespace: str,
) -> None:
    """The records to ``campaign-decisions`` first (the durable log), then the multipliers to the shared store,
    in one transaction with the version bump that tells replicas to re-read."""
    if not applied:
        return
    publish([record for record, _ in applied])
    pipe = shared.pipeline(transaction=True)
    pipe.hset(serve_key(namespace), mapping={r.campaign_id: pack(r.version, ppm.tolist()) for r, ppm in applied})
    pipe.incr(version_key(namespace))
    pipe.execute()


# --- the loop ---


def seek_to(consumer, topic: str, since: datetime) -> None:
    """Assigns every partition of ``topic`` and seeks each to the first offset at or after ``since``."""
    from kafka import TopicPartition

    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(partitions)
    offsets = consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in partitions})
    for tp in partitions:
        found = offsets.get(tp)
        if found is None:
            consumer.seek_to_end(tp)
        else:
            consumer.seek(tp, found.offset)


def heartbeat_file(settings) -> Path:
    return settings.local_dir.resolve() / "run" / "optimizer.heartbeat"


def is_alive(settings) -> bool:
    """Whether a running optimizer ticked recently (its heartbeat is younger than five ticks and half a minute)."""
    try:
        age = time.time() - heartbeat_file(settings).stat().st_mtime
    except FileNotFoundError:
        return False
    return age < 5 * settings.optimizer_tick_s + 30


def run(settings, *, once: bool = False, stop: threading.Event | None = None) -> Optimizer:
    """The service loop (module docstring); ``once``: rebuild, one tick, apply, and return."""
    from adstream.messaging import ensure_topics, make_consumer, make_producer
    from auction_service.campaign_store import store
    from auction_service.campaign_store.db import make_engine, make_session_factory

    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    ensure_topics(settings, [Topic.AD_FEEDBACK, Topic.CAMPAIGN_DECISIONS])
    optimizer = Optimizer(windows=Windows(bucket_s=settings.optimizer_bucket_s, buckets=settings.optimizer_buckets))
    consumer = make_consumer(settings, None)
    producer = make_producer(settings)
    shared = redis.Redis.from_url(settings.shared_store_url, socket_timeout=5.0, socket_connect_timeout=5.0)
    sessions = make_session_factory(make_engine(settings))
    seek_to(consumer, Topic.AD_FEEDBACK, datetime.now(UTC) - timedelta(seconds=optimizer.windows.span_s))
    heartbeat = heartbeat_file(settings)
    heartbeat.parent.mkdir(parents=True, exist_ok=True)

    def publish(records: list[CampaignDecision]) -> None:
        futures = [
            producer.send(Topic.CAMPAIGN_DECISIONS, key=r.campaign_id.encode(), value=r.model_dump(mode="json"))
            for r in records
        ]
        producer.flush(timeout=30)
        for future in futures:
            future.get(timeout=30)

    next_tick = time.monotonic()
    try:
        while not stop.is_set():
            wait_ms = 1_000 if once else max(0, int((next_tick - time.monotonic()) * 1000))
            batch = consumer.poll(timeout_ms=wait_ms, max_records=5_000)
            for records in batch.values():
                optimizer.fold(record.value for record in records)
            if time.monotonic() < next_tick and not once:
                continue
            if once and batch:  # rebuilding: read up to the end of the log before the one tick
                continue
            next_tick = time.monotonic() + settings.optimizer_tick_s
            now = datetime.now(UTC)
            with sessions() as session:
                campaigns = store.serving_campaigns(session, now)
            applied = optimizer.tick(campaigns, now)
            try:
                apply_decisions(applied, publish=publish, shared=shared, namespace=settings.shared_store_namespace)
            except Exception:  # the broker or the store down: the same decisions go again next tick
                log.exception("decisions not applied")
            else:
                optimizer.mark_sent(applied)
                if applied:
                    log.info("tick %d: %d decisions applied (%.1f ms)", optimizer.ticks, len(applied),
                             optimizer.tick_seconds[-1] * 1000)  # fmt: skip
            heartbeat.touch()
            if once:
                break
    finally:
        consumer.close()
        producer.close(timeout=10)
    return optimizer
