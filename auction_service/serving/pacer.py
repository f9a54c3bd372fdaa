"""Pacing at run time: the controllers move each campaign's λ and throttle from live spend, and every
replica's auctions use them (the rules are in ``auction_service.serving.pacing``).

- **One controller for the fleet.** Every PACING_UPDATE_S (10 s at most) each replica tries to take or
  renew the lease ``pacing:leader`` in the shared store (SET NX PX, ``LEASE_UPDATES`` updates long).
  The holder updates every campaign: it reads the states (``pacing:state``, one hash field per
  campaign), steps them with ``PacingController.update`` and writes them back with what the auctions
  read (``pacing:serve``: "λ_ppm throttle_ppm" per campaign) in one transaction. A leader killed with
  -9 stops renewing; within a lease another replica takes over and continues from the shared state,
  so a controller restart mid-day picks up where it stopped. Were two replicas ever to update at once
  (a lease lost to a long pause), each step is still a step from a state in the store: λ moves twice
  as fast for one interval, no spend is lost or counted twice.
- **Live spend.** The campaign's spend on its budget day: the ledger's (the campaign snapshot, reloaded
  within about a second of a charge) or the shared store's mirror of it, whichever is larger. The plan's
  budget is the daily budget, or less when the total budget left is less.
- **Traffic curve.** ``gold/traffic_curve`` (auctions per slot of the pacing day, from silver/auctions;
  written by ``adstream calibrate``), read every ``CURVE_RELOAD_S``; flat until it exists.
- **Per minute**, the leader also appends every campaign's pacing (plan, spend, λ, throttle, projected
  exhaustion) to ``pacing:minutes`` (JSON rows, the newest MINUTES_KEPT kept); ``adstream calibrate``
  lands them in gold/pacing_minute.
- **Every replica** reads ``pacing:serve`` each housekeeping tick into arrays aligned with its
  campaign snapshot; an auction gathers its candidates' λ (``run_auction(pacing_ppm=...)``) and drops a
  throttled candidate before scoring (filter reason "pacing throttle"). The store unreachable: the last
  multipliers read keep serving (the budget check, not pacing, is what protects money).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np
import redis
from redis.exceptions import RedisError

from adstream.events import PacingMode
from auction_service.domain import ServingCampaign
from auction_service.serving.pacing import PPM, PacingController, PacingSnapshot, PacingState, TrafficCurve

log = logging.getLogger(__name__)

MINUTES_KEPT = 500_000  # rows of pacing:minutes kept for the lake when nothing drains them (days of 200 campaigns)
LEASE_UPDATES = 3  # the leader's lease lasts this many updates: one missed renewal does not hand it over
CURVE_RELOAD_S = 60.0


@dataclass(frozen=True)
class Multipliers:
    """λ and the throttle rate of a campaign snapshot's rows, in millionths."""

    campaigns: tuple[ServingCampaign, ...]
    lambda_ppm: np.ndarray  # int64
    throttle_ppm: np.ndarray  # int64
    any_throttled: bool

    @classmethod
    def of(cls, campaigns: tuple[ServingCampaign, ...], serve: Mapping[str, tuple[int, int]]) -> Multipliers:
        pairs = [serve.get(c.campaign_id, (PPM, 0)) for c in campaigns]
        lam = np.fromiter((p[0] for p in pairs), dtype=np.int64, count=len(pairs))
        throttle = np.fromiter((p[1] for p in pairs), dtype=np.int64, count=len(pairs))
        return cls(campaigns, lam, throttle, bool(throttle.any()))


def parse_serve(raw: Mapping[bytes, bytes]) -> dict[str, tuple[int, int]]:
    """``pacing:serve`` as campaign -> (λ_ppm, throttle_ppm); a malformed entry is skipped (it serves unpaced)."""
    serve = {}
    for key, value in raw.items():
        try:
            lam, throttle = (int(part) for part in value.split())
        except ValueError:
            continue
        if 0 < lam <= PPM and 0 <= throttle < PPM:
            serve[key.decode()] = (lam, throttle)
    return serve


def plan_budget(campaign: ServingCampaign) -> int:
    """The budget the day's plan spreads: the daily budget, or the total left when that is less."""
    total_left = campaign.total_budget_micros - campaign.spent_micros + campaign.spent_today_micros
    return max(0, min(campaign.daily_budget_micros, total_left))


class Pacer:
    """One replica's side of pacing (module docstring): controller when it holds the lease, reader always."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        controller: PacingController,
        update_s: float,
        curve_source: object | None = None,
    ) -> None:
        self.client = client
        self.ns = namespace
        self.controller = controller
        self.update_s = update_s
        self.identity = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.curve = TrafficCurve.flat()
        self._curve_source = curve_source  # a callable returning per-slot auction counts, or None
        self._curve_loaded_at = -1e18
        self._last_update: datetime | None = None
        self._serve: dict[str, tuple[int, int]] = {}
        self._multipliers: Multipliers | None = None
        self.is_leader = False
        self.updates = 0  # controller passes this replica ran
        self.serve_changes = 0  # times the multipliers read changed (for /metrics)
        self._last_minute: datetime | None = None
        self._written: dict[str, str] = {}

    def key(self, *parts: str) -> str:
        return ":".join((self.ns, "pacing", *parts))

    # --- every replica ---

    def multipliers(self, campaigns: tuple[ServingCampaign, ...]) -> Multipliers:
        """The multipliers aligned with ``campaigns`` (rebuilt when the snapshot or the multipliers change)."""
        current = self._multipliers
        if current is None or current.campaigns is not campaigns:
            current = self._multipliers = Multipliers.of(campaigns, self._serve)
        return current

    def read(self) -> None:
        """Reads what the auctions use; the last values keep serving when the store does not answer."""
        try:
            serve = parse_serve(self.client.hgetall(self.key("serve")))
        except RedisError as exc:
            log.warning("pacing multipliers not read (%s); the last ones serve", type(exc).__name__)
            return
        if serve != self._serve:
            self._serve = serve
            self._multipliers = None
            self.serve_changes += 1

    @property
    def serving(self) -> Mapping[str, tuple[int, int]]:
        """campaign -> (λ_ppm, throttle_ppm) as last read."""
        return self._serve

    # --- the leader ---

    def tick(self, now: datetime, campaigns: Sequence[ServingCampaign], spent_today: Mapping[str, int]) -> bool:
        """Every housekeeping tick: reads the multipliers, and when an update is due and this replica holds
        (or takes) the lease, steps every campaign's controller. True when it updated."""
        due = self._last_update is None or (now - self._last_update).total_seconds() >= self.update_s
        updated = False
        if due and self._hold_lease():
            self._last_update = now
            self._reload_curve(now)
            self.update(now, campaigns, spent_today)
            updated = True
        self.read()
        return updated

    def _hold_lease(self) -> bool:
        lease_ms = int(self.update_s * LEASE_UPDATES * 1000)
        try:
            key = self.key("leader")
            if self.client.set(key, self.identity, nx=True, px=lease_ms):
                self.is_leader = True
            elif self.client.get(key) == self.identity.encode():
                self.client.pexpire(key, lease_ms)
                self.is_leader = True
            else:
                self.is_leader = False
        except RedisError:
            self.is_leader = False
        return self.is_leader

    def _reload_curve(self, now: datetime) -> None:
        if self._curve_source is None or now.timestamp() - self._curve_loaded_at < CURVE_RELOAD_S:
            return
        self._curve_loaded_at = now.timestamp()
        try:
            counts = self._curve_source()  # type: ignore[operator]
        except Exception as exc:  # the curve only shapes the plan: keep the last one
            log.warning("traffic curve not read (%s: %s); the last one plans", type(exc).__name__, exc)
            return
        if counts:
            self.curve = TrafficCurve.learn(counts)

    def states(self, campaign_ids: Sequence[str]) -> dict[str, PacingState]:
        raw = self.client.hmget(self.key("state"), list(campaign_ids)) if campaign_ids else []
        states = {}
        for campaign_id, value in zip(campaign_ids, raw, strict=True):
            if value is None:
                continue
            try:
                states[campaign_id] = PacingState.from_fields(_fields(value))
            except ValueError as exc:  # a state this release cannot read starts afresh
                log.warning("pacing state of %s unreadable (%s): starting afresh", campaign_id, exc)
        return states

    def update(self, now: datetime, campaigns: Sequence[ServingCampaign], spent_today: Mapping[str, int]) -> None:
        """One controller pass over ``campaigns`` from the shared state; writes states and multipliers at once."""
        states = self.states([c.campaign_id for c in campaigns])
        written, serve = {}, {}
        for campaign in campaigns:
            cid = campaign.campaign_id
            state = replace(states.get(cid, PacingState()), mode=PacingMode(campaign.pacing_mode))
            spent = max(campaign.spent_today_micros, spent_today.get(cid, 0))
            state = self.controller.update(
                state, now=now, spent_today_micros=spent, daily_budget_micros=plan_budget(campaign), curve=self.curve
            )
            written[cid] = _packed(state)
            serve[cid] = f"{state.lambda_ppm} {state.throttle_ppm}"
        self._written = written
        if not written:
            return
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.key("state"), mapping=written)
        pipe.delete(self.key("serve"))
        pipe.hset(self.key("serve"), mapping=serve)
        minute = now.replace(second=0, microsecond=0)
        if minute != self._last_minute:
            rows = [self._minute_row(c, minute, now, spent_today) for c in campaigns]
            pipe.rpush(self.key("minutes"), *rows)
            pipe.ltrim(self.key("minutes"), -MINUTES_KEPT, -1)
        pipe.execute()
        self._last_minute = minute
        self.updates += 1

    def _minute_row(
        self, campaign: ServingCampaign, minute: datetime, now: datetime, spent_today: Mapping[str, int]
    ) -> str:
        """One row of gold/pacing_minute (``adstream calibrate`` lands them), as JSON."""
        spent = max(campaign.spent_today_micros, spent_today.get(campaign.campaign_id, 0))
        state = PacingState.from_fields(_fields(self._written[campaign.campaign_id]))
        report = self.controller.snapshot(
            state, now=now, spent_today_micros=spent, daily_budget_micros=plan_budget(campaign), curve=self.curve
        )
        return json.dumps({
            "campaign_id": campaign.campaign_id, "minute": minute.isoformat(), "at": now.isoformat(),
            "day_start": self.controller.clock.start(now).isoformat(), "mode": str(report.mode),
            "daily_budget_micros": campaign.daily_budget_micros, "plan_budget_micros": plan_budget(campaign),
            "plan_micros": report.plan_micros, "spent_today_micros": spent,
            "pacing_multiplier": report.pacing_multiplier, "throttle_rate": report.throttle_rate,
            "exhausts_at": None if report.exhausts_at is None else report.exhausts_at.isoformat(),
        })  # fmt: skip

    def report(self, campaign: ServingCampaign, now: datetime, spent_today: int | None = None) -> PacingSnapshot:
        """Where ``campaign``'s pacing stands now (for the API, the CLI and /metrics)."""
        state = self.states([campaign.campaign_id]).get(campaign.campaign_id, PacingState())
        state = replace(state, mode=PacingMode(campaign.pacing_mode))
        spent = campaign.spent_today_micros if spent_today is None else spent_today
        return self.controller.snapshot(
            state, now=now, spent_today_micros=spent, daily_budget_micros=plan_budget(campaign), curve=self.curve
        )


def _packed(state: PacingState) -> str:
    return " ".join(f"{name}={value}" for name, value in state.to_fields().items())


def _fields(value: bytes | str) -> dict[str, str]:
    text = value.decode() if isinstance(value, bytes) else value
    return dict(part.split("=", 1) for part in text.split(" "))


def throttled_rows(multipliers: Multipliers, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Which of ``rows`` sit this auction out (a boolean mask), each with its campaign's throttle rate."""
    if not multipliers.any_throttled or rows.size == 0:
        return np.zeros(rows.size, dtype=bool)
    return rng.random(rows.size) * PPM < multipliers.throttle_ppm[rows]
