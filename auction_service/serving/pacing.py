"""Budget pacing: how much of its daily budget a campaign should have spent by now, and the
bid multiplier λ and throttle rate that keep it there.

Pure functions and frozen values: no I/O, no clock (every time is passed in), no settings.
The caller keeps one ``PacingState`` per campaign (``to_fields`` / ``from_fields`` fit a
Redis hash), calls ``PacingController.update`` about every ``UPDATE_INTERVAL_S`` seconds
with the campaign's spend today, hands λ to the auction (``run_auction(pacing_ppm=...)``)
and skips the campaign in an auction when ``throttled`` says so. The daily budget itself is
enforced elsewhere (the budget check); pacing only decides how evenly it is spent.

Rules, in one place:

- **Day** (``adstream.days``): day ``i`` is ``[i x day_length_s, (i + 1) x day_length_s)`` seconds after the
  Unix epoch, so with the default 86 400 s it is the UTC calendar day (shorter days are for
  simulation). ``spent_today_micros`` is the spend since that day's start.
- **Plan**: ``daily_budget x curve.cumulative_share(fraction of the day gone)``, where the
  ``TrafficCurve`` is the share of a day's auctions per slot, learned from auction counts
  with a flat prior. The plan is a function of the current budget: a budget raised
  mid-day raises the plan at once, and the controller catches up.
- **Controller** (``even`` mode): multiplicative pacing (Conitzer et al., "Multiplicative
  Pacing Equilibria in Auction Markets"): ``λ <- clip(λ x exp(-η x error))``. The error, in
  units of the plan's spend over the last interval, is the interval's spend minus the
  plan's, plus the deviation of spend from plan so far spread over ``catch_up_s``:
  the first term reacts to the spend rate, the second brings the spend back onto the
  plan; without it the loop would hold the rate but never repay a surplus or a deficit.
  It is clipped to ``[-max_error, max_error]`` so one noisy interval moves λ by at most a
  factor ``exp(η x max_error)``. With λ at ``lambda_floor_ppm`` and spend still ahead of plan,
  the same step raises the throttle rate, the probability of skipping the campaign in an
  auction (Agarwal et al., "Budget pacing for targeted online advertisements at LinkedIn",
  KDD 2014); behind plan, the throttle falls to 0 before λ rises. Both are one quantity, the
  share of full-speed spend kept, ``λ x (1 - throttle)``, clipped to its range: the bounds
  are where the controller stops (anti-windup), so nothing accumulates while it is clipped.
- **ASAP** mode: λ = 1 and no throttle: the campaign spends as fast as the market lets it.
- **New day**: spend 0 at the day's start, λ and the throttle carried over from the day
  before: the market changes little overnight, while λ = 1 spends at full speed until the
  controller catches up (in the tests' market, a $8-a-day campaign starting at λ = 1 spent
  2.6 times its first hour's plan). A campaign never updated starts at λ = 1, no throttle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import accumulate

from adstream.days import DAY_LENGTH_S, DayClock, at_micros, micros_since_epoch
from adstream.events import PacingMode

_MICROS_PER_S = 1_000_000

SLOTS_PER_DAY = 24
UPDATE_INTERVAL_S = 10  # how often the caller is meant to call ``PacingController.update``
PPM = 1_000_000  # λ and the throttle rate are integer millionths; λ = PPM is unpaced
# Gain and clip: one update moves λ by at most a factor e^0.2 (from 1 to 0.1 in 12 updates, two minutes).
# Measured on test_pacing's market with a 5x traffic spike, bids and competitors spread by 3 % (spend
# very elastic in λ): η = 0.2 made λ swing ±10 % every few updates and missed the worst hour's plan by
# 23 %; η = 0.1 (clip 2) missed it by 13 %, the median hour by 0.4 %.
ETA = 0.1
MAX_ERROR = 2.0
LAMBDA_FLOOR_PPM = 100_000  # below λ = 0.1 the throttle takes over
MAX_THROTTLE_PPM = 990_000  # keep 1 % of auctions: a campaign never goes silent for the controller
CATCH_UP_S = 1_800  # a deviation from plan is repaid over about half an hour
PRIOR_AUCTIONS = 1_000  # the flat prior of a traffic curve, as auctions spread evenly over the slots


@dataclass(frozen=True, slots=True)
class TrafficCurve:
    """The share of a day's auctions in each of its equal slots (e.g. 24 hours), summing to 1."""

    shares: tuple[float, ...]
    _cumulative: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.shares or any(not share >= 0 for share in self.shares):  # also rejects NaN
            raise ValueError("a traffic curve needs at least one slot and no negative share")
        if not math.isclose(math.fsum(self.shares), 1.0, rel_tol=1e-9):
            raise ValueError(f"the shares of a traffic curve must sum to 1, got {math.fsum(self.shares)}")
        cumulative = (0.0, *accumulate(self.shares))
        object.__setattr__(self, "_cumulative", (*cumulative[:-1], 1.0))  # exactly 1 at the end of the day

    @classmethod
    def flat(cls, slots: int = SLOTS_PER_DAY) -> TrafficCurve:
        return cls.learn([0] * slots)

    @classmethod
    def learn(cls, auctions_per_slot: Sequence[int], *, prior_auctions: float = PRIOR_AUCTIONS) -> TrafficCurve:
        """The curve of auction counts per slot (one day's or several days' summed), smoothed toward flat:
        ``prior_auctions`` pseudo-auctions spread evenly over the slots, so with no counts it is flat."""
        slots = len(auctions_per_slot)
        if slots == 0 or any(count < 0 for count in auctions_per_slot):
            raise ValueError("auction counts need at least one slot and no negative count")
        if not prior_auctions > 0:
            raise ValueError(f"prior_auctions must be positive, got {prior_auctions}")
        total = sum(auctions_per_slot) + prior_auctions
        return cls(tuple((count + prior_auctions / slots) / total for count in auctions_per_slot))

    @property
    def slots(self) -> int:
        return len(self.shares)

    def cumulative_share(self, fraction_of_day: float) -> float:
        """The share of the day's auctions before ``fraction_of_day`` (clipped to [0, 1]): 0 at 0, 1 at 1,
        linear within a slot."""
        position = max(0.0, fraction_of_day) * self.slots
        if position >= self.slots:
            return 1.0
        slot = int(position)
        before, after = self._cumulative[slot], self._cumulative[slot + 1]
        return min(after, before + (after - before) * (position - slot))


@dataclass(frozen=True, slots=True)
class PacingState:
    """One campaign's pacing, as of its last update. Money is integer micros."""

    mode: PacingMode = PacingMode.EVEN
    lambda_ppm: int = PPM  # the bid multiplier λ in millionths
    throttle_ppm: int = 0  # the probability of skipping the campaign in an auction, in millionths
    day_index: int | None = None  # None: never updated
    updated_at: datetime | None = None
    spent_at_update_micros: int = 0  # spend today at ``updated_at``
    interval_spent_micros: int = 0  # spend over the interval that ended at ``updated_at``
    interval_us: int = 0  # that interval's length

    def __post_init__(self) -> None:
        if not 0 < self.lambda_ppm <= PPM:
            raise ValueError(f"lambda_ppm must be in (0, {PPM}], got {self.lambda_ppm}")
        if not 0 <= self.throttle_ppm < PPM:
            raise ValueError(f"throttle_ppm must be in [0, {PPM}), got {self.throttle_ppm}")
        if min(self.spent_at_update_micros, self.interval_spent_micros, self.interval_us) < 0:
            raise ValueError("spend and interval of a pacing state cannot be negative")

    def to_fields(self) -> dict[str, str]:
        """The state as the string fields of a hash; ``from_fields`` reads them back exactly."""
        return {
            "mode": str(self.mode),
            "lambda_ppm": str(self.lambda_ppm),
            "throttle_ppm": str(self.throttle_ppm),
            "day_index": "" if self.day_index is None else str(self.day_index),
            "updated_at_us": "" if self.updated_at is None else str(micros_since_epoch(self.updated_at)),
            "spent_at_update_micros": str(self.spent_at_update_micros),
            "interval_spent_micros": str(self.interval_spent_micros),
            "interval_us": str(self.interval_us),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> PacingState:
        """The state written by ``to_fields``; raises ValueError for a missing or malformed field."""
        try:
            day, updated = fields["day_index"], fields["updated_at_us"]
            return cls(
                mode=PacingMode(fields["mode"]),
                lambda_ppm=int(fields["lambda_ppm"]),
                throttle_ppm=int(fields["throttle_ppm"]),
                day_index=int(day) if day else None,
                updated_at=at_micros(int(updated)) if updated else None,
                spent_at_update_micros=int(fields["spent_at_update_micros"]),
                interval_spent_micros=int(fields["interval_spent_micros"]),
                interval_us=int(fields["interval_us"]),
            )
        except KeyError as missing:
            raise ValueError(f"pacing state field {missing} is missing") from None


def throttled(state: PacingState, draw: float) -> bool:
    """Whether the campaign sits out one auction, given a uniform ``draw`` in [0, 1)."""
    return draw * PPM < state.throttle_ppm


@dataclass(frozen=True, slots=True)
class PacingSnapshot:
    """Where a campaign's pacing stands, for reports."""

    mode: PacingMode
    plan_micros: int  # what the plan has it spend by now
    spent_micros: int
    pacing_multiplier: float  # λ
    throttle_rate: float
    exhausts_at: datetime | None  # at the last interval's spend rate; now if spent; None if not today


@dataclass(frozen=True, slots=True)
class PacingController:
    """The controller's parameters; ``update`` steps one campaign's ``PacingState`` (rules in the module docstring)."""

    day_length_s: int = DAY_LENGTH_S
    origin_s: int = 0  # seconds since the epoch at which a day starts (adstream.days)
    eta: float = ETA
    max_error: float = MAX_ERROR
    lambda_floor_ppm: int = LAMBDA_FLOOR_PPM
    max_throttle_ppm: int = MAX_THROTTLE_PPM
    catch_up_s: float = CATCH_UP_S
    clock: DayClock = field(init=False, repr=False, compare=False)

    @classmethod
    def of(cls, clock: DayClock) -> PacingController:
        """The controller for days of ``clock``: deviations repaid over the same share of a day as the
        default's half hour of 24 (a 60-minute simulated day repays over 75 s), never under 30 s."""
        return cls(clock.length_s, clock.origin_s, catch_up_s=max(30.0, CATCH_UP_S * clock.length_s / DAY_LENGTH_S))

    def __post_init__(self) -> None:
        object.__setattr__(self, "clock", DayClock(self.day_length_s, self.origin_s))  # checks the length
        if not (self.eta > 0 and self.max_error > 0 and self.catch_up_s > 0):
            raise ValueError("eta, max_error and catch_up_s must be positive")
        if not 0 < self.lambda_floor_ppm <= PPM:
            raise ValueError(f"lambda_floor_ppm must be in (0, {PPM}], got {self.lambda_floor_ppm}")
        if not 0 <= self.max_throttle_ppm < PPM:
            raise ValueError(f"max_throttle_ppm must be in [0, {PPM}), got {self.max_throttle_ppm}")

    def today(self, state: PacingState, now: datetime) -> PacingState:
        """``state``, or the start of ``now``'s day when it is from another day (or new)."""
        index = self.clock.index(now)
        if state.day_index == index and state.updated_at is not None:
            return state
        start, _ = self.clock.bounds(index)
        return PacingState(state.mode, state.lambda_ppm, state.throttle_ppm, day_index=index, updated_at=start)

    def plan_micros(self, *, now: datetime, daily_budget_micros: int, curve: TrafficCurve) -> int:
        """What the campaign should have spent by ``now`` today."""
        return math.floor(max(0, daily_budget_micros) * self._planned_share(now, curve))

    def update(
        self,
        state: PacingState,
        *,
        now: datetime,
        spent_today_micros: int,
        daily_budget_micros: int,
        curve: TrafficCurve,
    ) -> PacingState:
        """The state at ``now``, given the campaign's spend today and its current daily budget."""
        state = self.today(state, now)
        last = state.updated_at or now  # always set by ``today``
        elapsed_us = micros_since_epoch(now) - micros_since_epoch(last)
        if elapsed_us <= 0:
            return state
        interval_spent = max(0, spent_today_micros - state.spent_at_update_micros)
        moved = replace(
            state,
            updated_at=now,
            spent_at_update_micros=spent_today_micros,
            interval_spent_micros=interval_spent,
            interval_us=elapsed_us,
        )
        if state.mode == PacingMode.ASAP:
            return replace(moved, lambda_ppm=PPM, throttle_ppm=0)
        budget = max(0, daily_budget_micros)
        plan_before = budget * self._planned_share(last, curve)
        plan_now = budget * self._planned_share(now, curve)
        planned = plan_now - plan_before
        if planned <= 0:  # nothing to spend in the interval (no budget): no evidence either way
            return moved
        catch_up = (spent_today_micros - plan_now) * (elapsed_us / _MICROS_PER_S) / self.catch_up_s
        error = (interval_spent - planned + catch_up) / planned
        error = min(self.max_error, max(-self.max_error, error))
        return replace(moved, **self._split(self._level(state) - self.eta * error))

    def snapshot(
        self,
        state: PacingState,
        *,
        now: datetime,
        spent_today_micros: int,
        daily_budget_micros: int,
        curve: TrafficCurve,
    ) -> PacingSnapshot:
        """The report of ``state`` at ``now``; exhaustion is projected linearly from the last interval's spend."""
        state = self.today(state, now)
        exhausts_at = None
        left = daily_budget_micros - spent_today_micros
        if left <= 0:
            exhausts_at = now
        elif state.interval_spent_micros > 0:
            at = micros_since_epoch(now) + -(-left * state.interval_us // state.interval_spent_micros)
            if at < micros_since_epoch(self.clock.bounds(self.clock.index(now))[1]):
                exhausts_at = at_micros(at)
        return PacingSnapshot(
            mode=state.mode,
            plan_micros=self.plan_micros(now=now, daily_budget_micros=daily_budget_micros, curve=curve),
            spent_micros=spent_today_micros,
            pacing_multiplier=state.lambda_ppm / PPM,
            throttle_rate=state.throttle_ppm / PPM,
            exhausts_at=exhausts_at,
        )

    def _planned_share(self, at: datetime, curve: TrafficCurve) -> float:
        return curve.cumulative_share(self.clock.fraction(at))

    def _level(self, state: PacingState) -> float:
        """The log of the share of full-speed spend kept, λ x (1 - throttle)."""
        return math.log(state.lambda_ppm / PPM) + math.log1p(-state.throttle_ppm / PPM)

    def _split(self, level: float) -> dict[str, int]:
        """λ and the throttle for ``level``: λ down to its floor first, then the throttle; clipped at both ends."""
        floor_level = math.log(self.lambda_floor_ppm / PPM)
        lowest = floor_level + math.log1p(-self.max_throttle_ppm / PPM)
        level = min(0.0, max(lowest, level))
        if level >= floor_level:
            lambda_ppm = min(PPM, max(self.lambda_floor_ppm, round(math.exp(level) * PPM)))
            return {"lambda_ppm": lambda_ppm, "throttle_ppm": 0}
        throttle_ppm = round(-math.expm1(level - floor_level) * PPM)
        return {"lambda_ppm": self.lambda_floor_ppm, "throttle_ppm": min(self.max_throttle_ppm, throttle_ppm)}
