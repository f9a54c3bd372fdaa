"""The campaign optimizer service: live windows from Kafka, a decision every tick, applied to serving.

    adstream optimize [--once]

- **Reads** ``ad-feedback`` straight from Kafka (no consumer group: it assigns itself every partition),
  folding each delivered, valid event into its campaign x platform window (``optimizer.windows``):
  impressions, clicks, conversions, and the spend the ledger charged. On start it **rebuilds** the
  windows by seeking every partition to the window's start time (``offsets_for_times``), so a
  restart reproduces the windows it had, and the decisions with them, from the log alone.
- **Every** ``OPTIMIZER_TICK_S`` (2 s) it forecasts every optimized campaign x platform at once
  (``optimizer.forecast``, the category priors pooled from the window) and decides
  (``optimizer.decide``); the campaigns are re-read from the campaign store every
  ``CAMPAIGNS_REFRESH_S``. The work of a tick depends on the number of campaigns, not on the traffic.
- **Applies** a campaign's decision when it changed (a multiplier moved by more than ``CHANGE_PPM`` or
  a reason changed) and once per round of ``ROUND_S`` (its Thompson draws are renewed then; each
  campaign's rounds start at its own phase, so a few campaigns renew each tick, not all at once):
  the ``CampaignDecision`` record goes to ``campaign-decisions`` (acknowledged), then the multipliers
  to the shared store (``adstream.decisions``), which every replica reads within its housekeeping
  tick. The record with its inputs and forecasts lands in ``gold/optimizer_decisions`` through the
  streaming job.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from adstream.contracts import Topic
from adstream.decisions import MULTIPLIER_SCALE, pack, platform_index, serve_key, version_key
from adstream.events import NOT_DELIVERED, PLATFORMS, CampaignDecision, ChargeStatus, EventType
from adstream.exporter import process_registry, serve
from auction_service.domain import ServingCampaign
from optimizer.decide import PRICING_CODES, Campaigns, Decision, Reason, decide
from optimizer.forecast import Forecast, forecast
from optimizer.windows import CLICKS, CONVERSIONS, IMPRESSIONS, SPEND, Windows

log = logging.getLogger(__name__)

CHANGE_PPM = 20_000  # a multiplier moving less than 2 points is not a new decision
ROUND_S = 60.0  # Thompson draws are renewed, and every decision sent again, once per round
CAMPAIGNS_REFRESH_S = 10.0  # how often the optimized campaigns are re-read from the campaign store
CAUGHT_UP_WAIT_MS = 600  # an empty poll this long (a fetch waits 500 ms at most) means nothing was left to read
PRIOR_CTR, PRIOR_CVR = 0.03, 0.05  # the category priors' own prior, before the window holds anything
CATEGORY_PRIOR_STRENGTH = 1_000.0  # a pooled rate weighs as many trials against the level above it
EVENT_METRIC = {EventType.IMPRESSION.value: IMPRESSIONS, EventType.CLICK.value: CLICKS,
                EventType.CONVERSION.value: CONVERSIONS}  # fmt: skip
REASON_NAMES = [reason.name.lower() for reason in sorted(Reason)]
_CHARGED = ChargeStatus.CHARGED.value
_PLATFORM_INDEX = {tuple(name.split("/")): platform_index(*name.split("/")) for name in PLATFORMS}


def event_values(events: Iterable[Mapping]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(campaign ids, platform indices, times in seconds, METRICS rows) of the delivered, valid events of
    ``events`` (``ad-feedback`` records as dicts): invalid traffic and undelivered events are left out,
    and only a charged event carries spend."""
    ids, platforms, times, rows = [], [], [], []
    for event in events:
        metric = EVENT_METRIC.get(event.get("event_type"))
        status = event.get("charge_status")
        if metric is None or event.get("ivt_category") or status in NOT_DELIVERED:
            continue
        values = [0, 0, 0, 0]
        values[metric] = 1
        if status == _CHARGED:
            values[SPEND] = int(event.get("cost_micros") or 0)
        at = event["event_time"]
        try:
            platform = _PLATFORM_INDEX.get((event.get("channel"), event.get("device_type")), -1)
        except TypeError:  # an unhashable value: no platform
            platform = -1
        ids.append(event["campaign_id"])
        platforms.append(platform)
        times.append(at.timestamp() if isinstance(at, datetime) else datetime.fromisoformat(at).timestamp())
        rows.append(values)
    return ids, np.array(platforms, dtype=np.int64), np.array(times, dtype=np.float64), np.array(rows, dtype=np.int64)


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


def pooled_priors(
    totals: np.ndarray, codes: np.ndarray, categories: int, everyone: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each campaign x platform's CTR and CVR prior (campaigns, platforms): its category's pooled rates on that
    platform over the window (every campaign of the category; ``codes`` number the categories 0 ..
    ``categories`` - 1), shrunk toward the platform's rates over ``everyone`` (the windows of every campaign,
    optimized or not; ``totals`` when None), themselves shrunk toward PRIOR_CTR and PRIOR_CVR. A platform's
    difference is seen across the whole market before one campaign's sparse cell could show it."""
    k = CATEGORY_PRIOR_STRENGTH
    market = (totals if everyone is None else everyone).sum(axis=0)  # platforms x metrics
    market_ctr = (market[:, CLICKS] + PRIOR_CTR * k) / (market[:, IMPRESSIONS] + k)
    market_cvr = (market[:, CONVERSIONS] + PRIOR_CVR * k) / (market[:, CLICKS] + k)
    # Summed per category by one bincount over (category, cell): add.at's strided path took a quarter of a tick.
    cells = int(np.prod(totals.shape[1:]))
    flat = (np.asarray(codes, dtype=np.int64)[:, None] * cells + np.arange(cells)).ravel()
    weights = np.asarray(totals, dtype=np.float64).reshape(-1)
    pooled = np.bincount(flat, weights=weights, minlength=categories * cells).reshape(categories, *totals.shape[1:])
    ctr = (pooled[..., CLICKS] + market_ctr * k) / (pooled[..., IMPRESSIONS] + k)
    cvr = (pooled[..., CONVERSIONS] + market_cvr * k) / (pooled[..., CLICKS] + k)
    return ctr[codes], cvr[codes]


def round_quantiles(campaign_id: str, round_index: int) -> np.ndarray:
    """The uniform numbers a campaign's CTR and CVR draws invert in one round (2 x platforms): derived from the
    campaign and the round alone, so a restart on the same data draws the same."""
    # 53 random bits per number from an extendable hash: a generator seeded per campaign cost 20x more.
    digest = hashlib.shake_128(f"{campaign_id}:{round_index}".encode()).digest(2 * len(PLATFORMS) * 8)
    return ((np.frombuffer(digest, dtype=">u8") >> 11) * 2.0**-53).reshape(2, len(PLATFORMS))


def phase_s(campaign_id: str, round_s: float) -> float:
    """Where in a round a campaign's rounds begin, from its id: campaigns renew spread over the round."""
    digest = hashlib.blake2b(f"phase:{campaign_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * round_s


def multipliers_ppm(decision: Decision) -> np.ndarray:
    return np.rint(decision.multiplier * MULTIPLIER_SCALE).astype(np.int64)


@dataclass(frozen=True, slots=True)
class Decided:
    """One campaign's decision to apply: the ``CampaignDecision`` record as JSON (built without validation;
    the tests validate its shape) and its multipliers in millionths."""

    campaign_id: str
    version: int
    record: dict
    multipliers_ppm: np.ndarray
    reasons: np.ndarray
    round_index: int

    @property
    def data_until_us(self) -> int:
        until = self.record.get("data_until")
        return int(datetime.fromisoformat(until).timestamp() * 1_000_000) if until else 0

    @classmethod
    def of(cls, record: CampaignDecision, multipliers_ppm: np.ndarray, round_index: int = 0) -> Decided:
        reasons = np.array([Reason[p.reason.upper()] for p in record.platforms], dtype=np.int8)
        return cls(record.campaign_id, record.version, record.model_dump(mode="json"), multipliers_ppm, reasons,
                   round_index)  # fmt: skip


@dataclass
class _Plan:
    """What a tick needs of a campaign list, built once per list: the optimized ones and their arrays."""

    source: Sequence[ServingCampaign]
    campaigns: list[ServingCampaign]
    ids: list[str]
    rows: np.ndarray  # their window rows
    arrays: Campaigns
    category_codes: np.ndarray
    categories: int
    phase_s: np.ndarray


@dataclass
class Optimizer:
    """The windows and the last decisions applied; ``fold`` events in, ``tick`` to decide (module docstring)."""

    windows: Windows = field(default_factory=Windows)
    round_s: float = ROUND_S
    ticks: int = 0
    tick_seconds: list[float] = field(default_factory=list)
    sent: dict[str, np.ndarray] = field(default_factory=dict)  # campaign -> the multipliers last applied
    data_until_s: float = 0.0  # the decisions reflect every event before it: caught up with Kafka, or the newest event
    prior_strengths: dict[str, float] = field(default_factory=dict)  # the last tick's, per rate (prior_strength)
    _plan: _Plan | None = None
    # Per window row: the last applied multipliers, reasons and round; the round's uniform numbers.
    _sent_ppm: np.ndarray = field(default_factory=lambda: np.zeros((0, len(PLATFORMS)), dtype=np.int64))
    _sent_reason: np.ndarray = field(default_factory=lambda: np.zeros((0, len(PLATFORMS)), dtype=np.int8))
    _sent_round: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _quantiles: np.ndarray = field(default_factory=lambda: np.zeros((0, 2, len(PLATFORMS))))
    _quantile_round: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def fold(self, events: Iterable[Mapping]) -> int:
        ids, platforms, times, values = event_values(events)
        if not ids:
            return 0
        self.data_until_s = max(self.data_until_s, float(times.max()))
        return self.windows.add(ids, platforms, times, values)

    def caught_up(self, at_s: float) -> None:
        """Every event Kafka held at ``at_s`` (wall clock) has been folded in."""
        self.data_until_s = max(self.data_until_s, at_s)

    def tick(self, campaigns: Sequence[ServingCampaign], now: datetime) -> list[Decided]:
        """Decides for ``campaigns`` (those with optimize on) and returns the decisions to apply: those that
        changed, and each campaign once a round."""
        began = time.perf_counter()
        now_s = now.timestamp()
        self.windows.advance(now_s)
        plan = self._plan_of(campaigns)
        if not plan.ids:
            return []
        rows = plan.rows
        moments = self.windows.moments[rows]
        prior_ctr, prior_cvr = pooled_priors(
            moments[..., 0], plan.category_codes, plan.categories, everyone=self.windows.moments[..., 0]
        )
        predicted = forecast(moments, prior_ctr, prior_cvr, self.windows.buckets)
        self.prior_strengths = {"ctr": predicted.ctr_strength, "cvr": predicted.cvr_strength}
        round_index = np.floor((now_s + plan.phase_s) / self.round_s).astype(np.int64)
        for i in np.flatnonzero(self._quantile_round[rows] != round_index).tolist():
            self._quantiles[rows[i]] = round_quantiles(plan.ids[i], int(round_index[i]))
            self._quantile_round[rows[i]] = round_index[i]
        decision = decide(plan.arrays, predicted, self._quantiles[rows].transpose(1, 0, 2))
        ppm = multipliers_ppm(decision)
        changed = (
            (self._sent_round[rows] != round_index)
            | (np.abs(self._sent_ppm[rows] - ppm).max(axis=1) > CHANGE_PPM)
            | (self._sent_reason[rows] != decision.reason).any(axis=1)
        )
        window_start = datetime.fromtimestamp(
            (self.windows.latest_bucket - self.windows.buckets + 1) * self.windows.bucket_s, UTC
        )
        decided = decision_records(
            plan, np.flatnonzero(changed), decision, predicted, ppm, round_index, now, window_start, self.data_until_s
        )
        self.ticks += 1
        self.tick_seconds.append(time.perf_counter() - began)
        del self.tick_seconds[:-1000]
        return decided

    def mark_sent(self, decided: Sequence[Decided]) -> None:
        for item in decided:
            row = self.windows.rows[item.campaign_id]
            self._sent_ppm[row], self._sent_reason[row] = item.multipliers_ppm, item.reasons
            self._sent_round[row] = item.round_index
            self.sent[item.campaign_id] = item.multipliers_ppm

    def _plan_of(self, campaigns: Sequence[ServingCampaign]) -> _Plan:
        if self._plan is not None and self._plan.source is campaigns:
            return self._plan
        optimized = [c for c in campaigns if c.goals.optimize]
        ids = [c.campaign_id for c in optimized]
        rows = np.array([self.windows.row_of(cid) for cid in ids], dtype=np.int64)
        names, codes = np.unique(np.array([c.category for c in optimized], dtype=object), return_inverse=True)
        self._plan = _Plan(
            campaigns, optimized, ids, rows, campaign_arrays(optimized), codes.astype(np.int64).reshape(-1),
            len(names), np.array([phase_s(cid, self.round_s) for cid in ids]),
        )  # fmt: skip
        self._grow(self.windows.counts.shape[0])
        # The campaigns live until the next list: out of the collector's scans, a full collection no
        # longer walks them (it took ~200 ms every half minute with 10,000 campaigns).
        gc.freeze()
        return self._plan

    def _grow(self, capacity: int) -> None:
        """The per-row state as large as the windows' rows (new rows: never sent, no numbers drawn)."""
        extra = capacity - self._sent_round.shape[0]
        if extra <= 0:
            return
        width = len(PLATFORMS)
        self._sent_ppm = np.concatenate([self._sent_ppm, np.zeros((extra, width), dtype=np.int64)])
        self._sent_reason = np.concatenate([self._sent_reason, np.zeros((extra, width), dtype=np.int8)])
        self._sent_round = np.concatenate([self._sent_round, np.full(extra, -1, dtype=np.int64)])
        self._quantiles = np.concatenate([self._quantiles, np.zeros((extra, 2, width))])
        self._quantile_round = np.concatenate([self._quantile_round, np.full(extra, -1, dtype=np.int64)])


def decision_records(
    plan: _Plan,
    picked: np.ndarray,
    decision: Decision,
    predicted: Forecast,
    ppm: np.ndarray,
    round_index: np.ndarray,
    now: datetime,
    window_start: datetime,
    data_until_s: float = 0.0,
) -> list[Decided]:
    """The ``CampaignDecision`` records (as JSON) of the plan's campaigns at ``picked``, built from columns."""
    if not picked.size:
        return []
    version = int(now.timestamp() * 1_000_000)
    decided_at, start = now.isoformat(), window_start.isoformat()
    data_until = datetime.fromtimestamp(data_until_s, UTC).isoformat() if data_until_s else None

    def taken(array: np.ndarray) -> list:
        return array[picked].tolist()

    def nullable(array: np.ndarray) -> list:
        values = array[picked]
        return np.where(np.isnan(values), None, values).tolist()

    columns = {
        "multiplier": taken(np.round(ppm / MULTIPLIER_SCALE, 6)),
        "impressions": taken(predicted.impressions.astype(np.int64)),
        "clicks": taken(predicted.clicks.astype(np.int64)),
        "conversions": taken(predicted.conversions.astype(np.int64)),
        "spend_micros": taken(predicted.spend_micros.astype(np.int64)),
        "ctr": taken(predicted.ctr.mean),
        "cvr": taken(predicted.cvr.mean),
        "cvr_drawn": taken(decision.cvr_drawn),
        "ctr_trend_per_bucket": taken(predicted.ctr_trend.slope),
        "cvr_trend_per_bucket": taken(predicted.cvr_trend.slope),
        "cpc_micros": nullable(decision.cpc_micros),
        "roi_per_click_micros": nullable(decision.roi_per_click_micros),
        "p_losing": taken(np.clip(decision.p_losing, 0.0, 1.0)),
        "prior_ctr": taken(predicted.ctr_prior),
        "prior_cvr": taken(predicted.cvr_prior),
    }
    reasons = decision.reason[picked]
    names = ["platform", "reason", *columns]
    out = []
    # Per campaign, one tuple per platform zipped from the columns into a dict: a comprehension per field
    # took a fifth of a tick at 10,000 campaigns.
    per_campaign = zip(picked.tolist(), reasons.tolist(), zip(*columns.values(), strict=True), strict=True)
    for i, (row, codes, values) in enumerate(per_campaign):
        campaign = plan.campaigns[row]
        reason_names = [REASON_NAMES[code] for code in codes]
        platforms = [dict(zip(names, cell, strict=True)) for cell in zip(PLATFORMS, reason_names, *values, strict=True)]
        record = {
            "schema_version": 1, "decision_id": f"{campaign.campaign_id}:{version}",
            "campaign_id": campaign.campaign_id, "version": version, "decided_at": decided_at, "window_start": start,
            "data_until": data_until,
            "value_micros": campaign.goals.value_micros, "base_bid_micros": campaign.bid_micros,
            "ctr_prior_strength": predicted.ctr_strength, "cvr_prior_strength": predicted.cvr_strength,
            "platforms": platforms,
        }  # fmt: skip
        out.append(Decided(campaign.campaign_id, version, record, ppm[row], reasons[i], int(round_index[row])))
    return out


def apply_decisions(
    decided: Sequence[Decided],
    *,
    publish: Callable[[list[dict]], None],  # raises when the broker did not acknowledge
    shared: redis.Redis,
    namespace: str,
) -> None:
    """The records to ``campaign-decisions`` first (the durable log), then the multipliers to the shared store,
    in one transaction with the version bump that tells replicas to re-read."""
    if not decided:
        return
    publish([item.record for item in decided])
    pipe = shared.pipeline(transaction=True)
    values = {
        item.campaign_id: pack(item.version, item.data_until_us, item.multipliers_ppm.tolist()) for item in decided
    }
    pipe.hset(serve_key(namespace), mapping=values)
    pipe.incr(version_key(namespace))
    pipe.execute()


# --- the loop ---


class OptimizerMetrics:
    """The optimizer's metric families, served on BIND_HOST:OPTIMIZER_METRICS_PORT (``adstream.exporter``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else process_registry()
        r = self.registry
        self.lag = Gauge(
            "adstream_optimizer_consumer_lag_records",
            "ad-feedback records not folded into the windows yet, per partition (as of the last fetch)",
            ["topic", "partition"], registry=r,
        )  # fmt: skip
        # A tick's work grows with the optimized campaigns, not the traffic: from a millisecond to seconds.
        self.tick_duration = Histogram(
            "adstream_optimizer_tick_duration_seconds", "Time of one tick's decisions (forecasts and draws)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=r,
        )  # fmt: skip
        self.decisions = Counter(
            "adstream_optimizer_decisions_applied_total",
            "Campaign decisions published and written to serving",
            registry=r,
        )
        self.prior_strength = Gauge(
            "adstream_optimizer_prior_strength_trials",
            "How many trials (impressions for ctr, clicks for cvr) a cell's prior weighs, as the last tick estimated",
            ["rate"], registry=r,
        )  # fmt: skip

    def set_lag(self, lag: dict[tuple[str, int], int]) -> None:
        for (topic, partition), behind in lag.items():
            self.lag.labels(topic=topic, partition=str(partition)).set(behind)


def _caught_up_at(
    consumer, batch: Sequence, wait_ms: int, polled_at: float, last_polled_at: float | None
) -> float | None:
    """Up to when the consumer has read every partition, or None when it cannot tell: the start of a poll that
    found nothing in longer than a fetch waits, or, when every partition's position has reached the high
    watermark the latest fetch reported (fetched during this poll or the one before), the start of the last."""
    if not batch:
        return polled_at if wait_ms >= CAUGHT_UP_WAIT_MS else None
    behind = consumer.lag()  # only the partitions whose high watermark a fetch reported
    if len(behind) < len(consumer.assignment()) or any(behind.values()):
        return None
    return last_polled_at


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
    # What was opened is closed, also when a later step of the start fails.
    with contextlib.ExitStack() as closing:
        consumer = make_consumer(settings, None)
        closing.callback(consumer.close)
        producer = make_producer(settings)
        closing.callback(producer.close, timeout=10)
        shared = redis.Redis.from_url(settings.shared_store_url, socket_timeout=5.0, socket_connect_timeout=5.0)
        sessions = make_session_factory(make_engine(settings))
        window_start = datetime.now(UTC) - timedelta(seconds=optimizer.windows.span_s)
        consumer.assign_from_time(Topic.AD_FEEDBACK, int(window_start.timestamp() * 1000))
        heartbeat = heartbeat_file(settings)
        heartbeat.parent.mkdir(parents=True, exist_ok=True)
        metrics = OptimizerMetrics()
        exporter = serve(metrics.registry, settings.bind_host, settings.optimizer_metrics_port, "optimizer")
        if exporter is not None:
            closing.callback(exporter.close)

        def publish(records: list[dict]) -> None:
            producer.send_all(Topic.CAMPAIGN_DECISIONS, [(r["campaign_id"], r) for r in records], timeout_s=30)

        next_tick = campaigns_due = time.monotonic()
        last_polled_at: float | None = None
        campaigns: list[ServingCampaign] = []
        while not stop.is_set():
            wait_ms = 1_000 if once else max(0, int((next_tick - time.monotonic()) * 1000))
            polled_at = time.time()
            batch = consumer.poll(wait_ms / 1000, max_records=5_000)
            optimizer.fold(record.value for record in batch)
            metrics.set_lag(consumer.lag())
            if caught_up_at := _caught_up_at(consumer, batch, wait_ms, polled_at, last_polled_at):
                optimizer.caught_up(caught_up_at)
            last_polled_at = polled_at
            if time.monotonic() < next_tick and not once:
                continue
            if once and batch:  # rebuilding: read up to the end of the log before the one tick
                continue
            next_tick = time.monotonic() + settings.optimizer_tick_s
            now = datetime.now(UTC)
            if time.monotonic() >= campaigns_due:  # re-read now and then; the same list between (the plan's cache)
                with sessions() as session:
                    campaigns = store.serving_campaigns(session, now)
                campaigns_due = time.monotonic() + CAMPAIGNS_REFRESH_S
            began = time.perf_counter()
            applied = optimizer.tick(campaigns, now)
            metrics.tick_duration.observe(time.perf_counter() - began)  # a tick with no campaign to decide too
            for rate, strength in optimizer.prior_strengths.items():
                metrics.prior_strength.labels(rate=rate).set(strength)
            try:
                apply_decisions(applied, publish=publish, shared=shared, namespace=settings.shared_store_namespace)
            except Exception:  # the broker or the store down: the same decisions go again next tick
                log.exception("decisions not applied")
            else:
                optimizer.mark_sent(applied)
                metrics.decisions.inc(len(applied))
                if applied:
                    log.info("tick %d: %d decisions applied (%.1f ms)", optimizer.ticks, len(applied),
                             optimizer.tick_seconds[-1] * 1000)  # fmt: skip
            heartbeat.touch()
            if once:
                break
    return optimizer
