"""Budget pacing: the traffic curve, the pacing day, the state's hash fields, and the controller
on whole simulated days.

The simulated market: auctions arrive at a rate that follows the scenario's traffic; in each
the campaign bids λ x its CPM bid x a random value against the best competitor's eCPM, drawn
from a lognormal around the scenario's competitor median; it wins when its paced bid is
higher and it is not throttled, and then pays the competitor's eCPM per thousand (second
price). A win the daily budget cannot pay is refused (the hard cap). The controller is
updated every 10 simulated seconds. Every expected figure comes from the scenario (budget,
plan, times of day), never from the controller.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest

from adstream.events import PacingMode
from auction_service.domain import day_bounds, day_index, fraction_of_day
from auction_service.serving.pacing import (
    PPM,
    PacingController,
    PacingSnapshot,
    PacingState,
    TrafficCurve,
    throttled,
)

DAY_S = 86_400
STEP_S = 10
STEPS = DAY_S // STEP_S
START = datetime(2024, 6, 1, tzinfo=UTC)  # a UTC midnight: the start of a pacing day
AUCTIONS_PER_S = 20.0
BID_CPM = 3_000_000  # $3 CPM
COMPETITOR_CPM = 2_000_000  # the best competitor's median eCPM, $2
VALUE_SIGMA = 0.3  # how the campaign's value of an impression varies (pCTR, in a CPM world)
COMPETITOR_SIGMA = 0.5
BUDGET = 800_000_000  # $800 a day; at λ = 1 the campaign would spend about three times that
FLAT = TrafficCurve.flat()


def flat_traffic(fraction: float) -> float:
    return 1.0


def diurnal_traffic(fraction: float) -> float:
    """Quiet at night, a peak in the evening: 0.25x to 1.75x the mean rate."""
    return 1.0 - 0.75 * float(np.cos(2 * np.pi * (fraction - 0.125)))


@dataclass(frozen=True)
class Scenario:
    traffic: Callable[[float], float] = flat_traffic  # multiplier of the auction rate by fraction of the day
    competitor_cpm: Callable[[float], float] = lambda fraction: COMPETITOR_CPM
    budget: Callable[[float], int] = lambda fraction: BUDGET  # the daily budget in effect
    bid_cpm: int = BID_CPM
    curve: TrafficCurve = FLAT
    mode: PacingMode = PacingMode.EVEN


@dataclass
class Day:
    slot_spend: list[int] = field(default_factory=lambda: [0] * 24)
    spent: int = 0
    exhausted_at: float | None = None  # fraction of the day when the budget first refused a win
    states: list[PacingState] = field(default_factory=list)


def simulate(scenario: Scenario, *, restart_at_step: int | None = None, seed: int = 7) -> Day:
    rng = np.random.default_rng(seed)
    controller = PacingController()
    state = PacingState(mode=scenario.mode)
    day = Day()
    for step in range(STEPS):
        fraction = step / STEPS
        now = START + timedelta(seconds=step * STEP_S)
        budget = scenario.budget(fraction)
        if step == restart_at_step:  # a new process, with only what the hash held
            state, controller = PacingState.from_fields(state.to_fields()), PacingController()
        state = controller.update(
            state, now=now, spent_today_micros=day.spent, daily_budget_micros=budget, curve=scenario.curve
        )
        day.states.append(state)

        auctions = rng.poisson(AUCTIONS_PER_S * STEP_S * scenario.traffic(fraction))
        value = rng.lognormal(0.0, VALUE_SIGMA, auctions)
        competitor = scenario.competitor_cpm(fraction) * rng.lognormal(0.0, COMPETITOR_SIGMA, auctions)
        draws = rng.random(auctions)
        won = scenario.bid_cpm * (state.lambda_ppm / PPM) * value > competitor
        played = np.array([not throttled(state, draw) for draw in draws[won].tolist()], dtype=bool)
        prices = np.ceil(competitor[won][played] / 1000).astype(np.int64)  # per impression
        affordable = day.spent + np.cumsum(prices) <= budget
        if not affordable.all() and day.exhausted_at is None:
            day.exhausted_at = fraction
        spend = int(prices[affordable].sum())
        day.spent += spend
        day.slot_spend[step * 24 // STEPS] += spend
    return day


def median_slot_deviation(day: Day, scenario: Scenario) -> float:
    """The median over the 24 hours of |spend - plan| / plan, the plan being the budget x the hour's share."""
    deviations = []
    for slot, spent in enumerate(day.slot_spend):
        planned = scenario.budget((slot + 1) / 24 - 1e-9) * scenario.curve.shares[slot]
        deviations.append(abs(spent - planned) / planned)
    return statistics.median(deviations)


def assert_paced(day: Day, scenario: Scenario) -> None:
    budget = scenario.budget(1.0)
    assert 0.95 * budget <= day.spent <= budget
    assert day.exhausted_at is None or day.exhausted_at >= 0.9
    assert median_slot_deviation(day, scenario) <= 0.10


# --- the controller over whole days -----------------------------------------------------------


def test_even_traffic_spends_the_budget_along_the_plan() -> None:
    scenario = Scenario()
    day = simulate(scenario)
    assert_paced(day, scenario)
    # The market would take three times the budget at λ = 1, so the controller shades the bid.
    assert all(state.lambda_ppm < PPM for state in day.states[STEPS // 10 :])


def test_diurnal_traffic_with_a_learned_curve_spends_along_the_curve() -> None:
    counts = [round(AUCTIONS_PER_S * 3600 * diurnal_traffic((hour + 0.5) / 24)) for hour in range(24)]
    scenario = Scenario(traffic=diurnal_traffic, curve=TrafficCurve.learn(counts))
    assert_paced(simulate(scenario), scenario)


def test_a_traffic_spike_does_not_spend_ahead_of_plan() -> None:
    def spike(fraction: float) -> float:
        return 5.0 if 14 / 24 <= fraction < 15 / 24 else 1.0

    scenario = Scenario(traffic=spike)
    day = simulate(scenario)
    assert_paced(day, scenario)
    # The spike hour itself stays near its planned twenty-fourth of the budget.
    assert day.slot_spend[14] <= 1.15 * BUDGET / 24


def test_a_competitor_leaving_mid_day_does_not_speed_up_spend() -> None:
    scenario = Scenario(competitor_cpm=lambda fraction: COMPETITOR_CPM if fraction < 0.5 else COMPETITOR_CPM // 2)
    day = simulate(scenario)
    assert_paced(day, scenario)
    assert day.states[STEPS // 4].lambda_ppm > day.states[3 * STEPS // 4].lambda_ppm  # cheaper wins, lower bids


def test_a_budget_raised_mid_day_raises_the_plan() -> None:
    scenario = Scenario(budget=lambda fraction: BUDGET if fraction < 0.5 else 3 * BUDGET // 2)
    day = simulate(scenario)
    assert_paced(day, scenario)
    assert sum(day.slot_spend[:12]) <= 1.02 * BUDGET / 2  # before the raise, the old plan


def test_a_bid_far_above_the_market_is_throttled_once_lambda_is_at_its_floor() -> None:
    scenario = Scenario(bid_cpm=100 * COMPETITOR_CPM)
    day = simulate(scenario)
    assert_paced(day, scenario)
    midday = day.states[STEPS // 2]
    assert midday.lambda_ppm == PacingController().lambda_floor_ppm and midday.throttle_ppm > 0


def test_a_restart_mid_day_continues_from_the_stored_state() -> None:
    scenario = Scenario(traffic=lambda fraction: 5.0 if 0.4 <= fraction < 0.45 else 1.0)
    once = simulate(scenario)
    restarted = simulate(scenario, restart_at_step=STEPS // 2 + 3)
    assert restarted.states == once.states
    assert (restarted.spent, restarted.slot_spend) == (once.spent, once.slot_spend)
    assert_paced(restarted, scenario)


def test_asap_spends_as_fast_as_it_can_and_runs_out_early() -> None:
    scenario = Scenario(mode=PacingMode.ASAP)
    day = simulate(scenario)
    assert {(state.lambda_ppm, state.throttle_ppm) for state in day.states} == {(PPM, 0)}
    assert day.exhausted_at is not None and day.exhausted_at < 0.5
    assert day.spent <= BUDGET


def test_the_throttle_rises_only_with_lambda_at_its_floor_and_falls_first() -> None:
    floor = PacingController().lambda_floor_ppm
    day = simulate(Scenario(bid_cpm=100 * COMPETITOR_CPM))
    assert all(state.throttle_ppm == 0 or state.lambda_ppm == floor for state in day.states)


# --- single updates ---------------------------------------------------------------------------

NOON = START + timedelta(hours=12)
DAILY = 864_000_000  # the flat plan of this budget is 100_000 per 10 s, 432_000_000 by noon
ON_PLAN = 432_000_000


def at_noon(**overrides: object) -> PacingState:
    """A state updated 10 s before noon, on plan then."""
    values: dict[str, object] = {
        "day_index": day_index(START),
        "updated_at": NOON - timedelta(seconds=10),
        "spent_at_update_micros": ON_PLAN - 100_000,
    }
    values.update(overrides)
    return PacingState(**values)  # type: ignore[arg-type]


def update_at_noon(state: PacingState, spent: int, budget: int = DAILY) -> PacingState:
    return PacingController().update(state, now=NOON, spent_today_micros=spent, daily_budget_micros=budget, curve=FLAT)


def test_spend_ahead_of_plan_lowers_lambda_and_behind_raises_it() -> None:
    assert update_at_noon(at_noon(lambda_ppm=500_000), ON_PLAN).lambda_ppm == 500_000
    assert update_at_noon(at_noon(lambda_ppm=500_000), ON_PLAN + 50_000).lambda_ppm < 500_000
    assert update_at_noon(at_noon(lambda_ppm=500_000), ON_PLAN - 50_000).lambda_ppm > 500_000
    # One update moves λ by at most a factor e^(η x max error) = e^0.2, however far off the spend is.
    assert update_at_noon(at_noon(lambda_ppm=500_000), 10 * DAILY).lambda_ppm == round(500_000 * math.exp(-0.2))
    assert update_at_noon(at_noon(lambda_ppm=500_000), 0).lambda_ppm == round(500_000 * math.exp(0.2))


def test_a_surplus_is_repaid_even_at_the_planned_rate() -> None:
    # The last 10 s spent exactly the plan's 100_000, but the day is 1_000_000 ahead: λ still falls.
    ahead = at_noon(lambda_ppm=500_000, spent_at_update_micros=ON_PLAN + 900_000)
    assert update_at_noon(ahead, ON_PLAN + 1_000_000).lambda_ppm < 500_000


def test_nothing_winds_up_while_lambda_is_clipped_at_one() -> None:
    # Hours behind plan at λ = 1 (the market could not supply more): λ stays at 1, and the first
    # update ahead of plan lowers it at once.
    behind = at_noon(spent_at_update_micros=100_000_000)
    assert update_at_noon(behind, 100_000_000).lambda_ppm == PPM
    assert update_at_noon(at_noon(), ON_PLAN + 1_000_000).lambda_ppm < PPM


def test_at_the_floor_ahead_of_plan_throttles_and_behind_unthrottles_first() -> None:
    floor = PacingController().lambda_floor_ppm
    ahead = update_at_noon(at_noon(lambda_ppm=floor), ON_PLAN + 1_000_000)
    assert ahead.lambda_ppm == floor and ahead.throttle_ppm > 0
    behind = update_at_noon(at_noon(lambda_ppm=floor, throttle_ppm=500_000), ON_PLAN - 100_000)
    assert behind.lambda_ppm == floor and 0 < behind.throttle_ppm < 500_000
    # A small throttle is lifted whole before λ rises.
    lifted = update_at_noon(at_noon(lambda_ppm=floor, throttle_ppm=1_000), ON_PLAN - 100_000)
    assert lifted.throttle_ppm == 0 and lifted.lambda_ppm > floor


def test_a_budget_raise_is_a_new_plan() -> None:
    controller = PacingController()
    assert controller.plan_micros(now=NOON, daily_budget_micros=DAILY, curve=FLAT) == ON_PLAN
    assert controller.plan_micros(now=NOON, daily_budget_micros=2 * DAILY, curve=FLAT) == 2 * ON_PLAN
    # Spend on the old plan is behind the new one: λ rises.
    assert update_at_noon(at_noon(lambda_ppm=500_000), ON_PLAN, budget=2 * DAILY).lambda_ppm > 500_000


def test_asap_keeps_lambda_at_one_and_never_throttles() -> None:
    state = update_at_noon(at_noon(mode=PacingMode.ASAP, lambda_ppm=300_000, throttle_ppm=10), 10 * DAILY)
    assert (state.lambda_ppm, state.throttle_ppm) == (PPM, 0)
    assert not throttled(state, 0.0)


def test_a_new_day_starts_from_zero_spend_with_yesterdays_lambda() -> None:
    controller = PacingController()
    midnight = START + timedelta(days=1)
    state = controller.update(
        at_noon(lambda_ppm=100_000, throttle_ppm=500_000),
        now=midnight,
        spent_today_micros=0,
        daily_budget_micros=DAILY,
        curve=FLAT,
    )
    tomorrow = day_index(START) + 1
    assert state == PacingState(lambda_ppm=100_000, throttle_ppm=500_000, day_index=tomorrow, updated_at=midnight)
    # Then it paces as usual: the plan's 100_000 in the first 10 s is on plan.
    after = controller.update(
        state, now=midnight + timedelta(seconds=10), spent_today_micros=100_000, daily_budget_micros=DAILY, curve=FLAT
    )
    assert (after.lambda_ppm, after.throttle_ppm, after.spent_at_update_micros) == (100_000, 500_000, 100_000)
    # A campaign never paced starts unpaced.
    new = controller.update(PacingState(), now=midnight, spent_today_micros=0, daily_budget_micros=DAILY, curve=FLAT)
    assert (new.lambda_ppm, new.throttle_ppm, new.updated_at) == (PPM, 0, midnight)


def test_throttled_draws() -> None:
    state = PacingState(throttle_ppm=250_000)
    assert throttled(state, 0.0) and throttled(state, 0.249_999)
    assert not throttled(state, 0.25) and not throttled(state, 0.999)
    assert not throttled(PacingState(), 0.0)


def test_the_state_round_trips_through_hash_fields() -> None:
    states = [*simulate(Scenario(bid_cpm=100 * COMPETITOR_CPM)).states[::997], PacingState()]
    for state in states:
        fields = state.to_fields()
        assert all(isinstance(value, str) for value in fields.values())
        assert PacingState.from_fields(fields) == state
    with pytest.raises(ValueError, match="missing"):
        PacingState.from_fields({"mode": "even"})
    with pytest.raises(ValueError, match="lambda_ppm"):
        PacingState.from_fields(PacingState().to_fields() | {"lambda_ppm": "0"})
    with pytest.raises(ValueError):
        PacingState.from_fields(PacingState().to_fields() | {"mode": "fast"})


def test_snapshot_projects_exhaustion_from_the_last_interval() -> None:
    controller = PacingController()
    # 100_000 spent over the last 10 s is 10_000 a second; 216_000_000 left lasts 21_600 s: until 18:00.
    state = at_noon(updated_at=NOON, interval_spent_micros=100_000, interval_us=10_000_000)
    snapshot = controller.snapshot(
        state, now=NOON, spent_today_micros=DAILY - 216_000_000, daily_budget_micros=DAILY, curve=FLAT
    )
    assert snapshot == PacingSnapshot(
        mode=PacingMode.EVEN,
        plan_micros=ON_PLAN,
        spent_micros=DAILY - 216_000_000,
        pacing_multiplier=1.0,
        throttle_rate=0.0,
        exhausts_at=START + timedelta(hours=18),
    )
    # 1_000 a second would last past midnight; nothing spent lately projects nothing.
    slow = dataclasses.replace(state, interval_spent_micros=10_000)
    kwargs = {"now": NOON, "spent_today_micros": ON_PLAN, "daily_budget_micros": DAILY, "curve": FLAT}
    assert controller.snapshot(slow, **kwargs).exhausts_at is None  # type: ignore[arg-type]
    assert controller.snapshot(dataclasses.replace(state, interval_spent_micros=0), **kwargs).exhausts_at is None  # type: ignore[arg-type]
    spent = kwargs | {"spent_today_micros": DAILY}
    assert controller.snapshot(state, **spent).exhausts_at == NOON  # type: ignore[arg-type]


# --- the traffic curve and the pacing day -----------------------------------------------------


def test_with_no_counts_the_curve_is_flat() -> None:
    curve = TrafficCurve.learn([0] * 24)
    assert curve == TrafficCurve.flat() and curve.slots == 24
    assert all(math.isclose(share, 1 / 24) for share in curve.shares)
    for fraction in (0.0, 0.1, 0.5, 0.77, 1.0):
        assert math.isclose(curve.cumulative_share(fraction), fraction, abs_tol=1e-12)


def test_the_curve_learns_a_skewed_day_smoothed_toward_flat() -> None:
    # No auctions in the first 12 hours, 1_000 an hour after; 24 prior auctions are one per hour.
    curve = TrafficCurve.learn([0] * 12 + [1_000] * 12, prior_auctions=24)
    assert math.isclose(curve.shares[0], 1 / 12_024) and math.isclose(curve.shares[23], 1_001 / 12_024)
    assert math.isclose(curve.cumulative_share(0.5), 12 / 12_024)
    assert math.isclose(curve.cumulative_share(0.75), (12 + 6 * 1_001) / 12_024)
    # Linear within a slot: half-way through hour 18 is half-way between its ends.
    mid = curve.cumulative_share(18.5 / 24)
    assert math.isclose(mid, (curve.cumulative_share(18 / 24) + curve.cumulative_share(19 / 24)) / 2)
    # More counts weigh more than the prior: the same shape at 100 times the volume is further from flat.
    assert TrafficCurve.learn([0] * 12 + [100_000] * 12, prior_auctions=24).shares[0] < curve.shares[0]


def test_cumulative_share_is_monotone_from_0_to_1() -> None:
    counts = np.random.default_rng(3).integers(0, 10_000, size=24).tolist()
    for curve in (TrafficCurve.learn(counts), TrafficCurve.learn(counts, prior_auctions=1e9), TrafficCurve.flat(7)):
        values = [curve.cumulative_share(step / 1_000) for step in range(1_001)]
        assert values[0] == 0.0 and values[-1] == 1.0
        assert all(a <= b for a, b in itertools.pairwise(values))
        assert curve.cumulative_share(-0.5) == 0.0 and curve.cumulative_share(1.5) == 1.0


def test_a_curve_rejects_bad_counts() -> None:
    with pytest.raises(ValueError):
        TrafficCurve.learn([])
    with pytest.raises(ValueError):
        TrafficCurve.learn([1, -1])
    with pytest.raises(ValueError):
        TrafficCurve.learn([1, 2], prior_auctions=0)
    with pytest.raises(ValueError):
        TrafficCurve((0.5, 0.6))


def test_a_day_of_86400_seconds_is_the_utc_date() -> None:
    epoch_ordinal = date(1970, 1, 1).toordinal()
    for at in (START, START + timedelta(hours=23, minutes=59, seconds=59), datetime(1999, 12, 31, 7, tzinfo=UTC)):
        assert day_index(at) == at.date().toordinal() - epoch_ordinal
    assert day_index(START - timedelta(microseconds=1)) == day_index(START) - 1
    assert day_index(START.replace(tzinfo=None)) == day_index(START)  # naive is UTC
    assert day_bounds(day_index(START)) == (START, START + timedelta(days=1))


def test_a_day_of_3600_seconds_changes_every_hour() -> None:
    hours = [day_index(START + timedelta(minutes=minute), 3_600) for minute in range(0, 180, 30)]
    first = day_index(START, 3_600)
    assert hours == [first, first, first + 1, first + 1, first + 2, first + 2]
    assert first == (START - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(hours=1)
    start, end = day_bounds(first + 1, 3_600)
    assert (start, end) == (START + timedelta(hours=1), START + timedelta(hours=2))
    assert fraction_of_day(start + timedelta(minutes=15), start, 3_600) == 0.25
    with pytest.raises(ValueError):
        day_index(START, 0)
