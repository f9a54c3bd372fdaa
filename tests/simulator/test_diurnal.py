"""The simulator's traffic curve: the day's shape, its integral and inverse, and when visits are due.

Expected values come from the definition (levels per hour, joined linearly between the hours'
middles), computed here from ``DISPLAY_AD_HOURS``, not from the functions under test.
"""

from __future__ import annotations

import math
from itertools import pairwise

import pytest

from simulator.diurnal import DISPLAY_AD_DAY, DISPLAY_AD_HOURS, CurveKind, DayShape, VisitSchedule

HOURS = 24
LEVELS = [level * HOURS / math.fsum(DISPLAY_AD_HOURS) for level in DISPLAY_AD_HOURS]  # mean 1
DAY_START_S = 1_700_000_160  # a whole number of 240 s days (and of hours) after the epoch


def hour_mean(hour: int) -> float:
    """The mean of the shape over ``hour``: its first half runs from the midpoint with the hour before
    to the hour's level, its second half from there to the midpoint with the hour after."""
    before, level, after = LEVELS[hour - 1], LEVELS[hour], LEVELS[(hour + 1) % HOURS]
    return (before + 6 * level + after) / 8


def grid(steps_per_hour: int = 100) -> list[float]:
    return [step / (HOURS * steps_per_hour) for step in range(HOURS * steps_per_hour)]


def test_the_shape_takes_each_hours_level_at_its_middle_and_is_linear_between():
    assert len(DISPLAY_AD_HOURS) == DISPLAY_AD_DAY.slots == HOURS
    for hour in range(HOURS):
        assert DISPLAY_AD_DAY.at((hour + 0.5) / HOURS) == pytest.approx(LEVELS[hour], rel=1e-12)
        quarter_on = (hour + 0.75) / HOURS
        expected = 0.75 * LEVELS[hour] + 0.25 * LEVELS[(hour + 1) % HOURS]
        assert DISPLAY_AD_DAY.at(quarter_on) == pytest.approx(expected, rel=1e-12)
    assert DISPLAY_AD_DAY.at(0.0) == pytest.approx((LEVELS[-1] + LEVELS[0]) / 2, rel=1e-12)


def test_the_shape_has_mean_one_and_is_periodic_and_continuous():
    # Midpoints of 2,400 equal steps: exact for a curve linear between the hours' middles.
    steps = 2_400
    assert math.fsum(DISPLAY_AD_DAY.at((step + 0.5) / steps) for step in range(steps)) / steps == pytest.approx(
        1.0, abs=1e-12
    )
    for fraction in (0.0, 0.1234, 0.5, 0.999):
        for days in (-3, 1, 2, 400):
            assert DISPLAY_AD_DAY.at(fraction + days) == pytest.approx(DISPLAY_AD_DAY.at(fraction), abs=1e-9)
    corners = [0.0, 1.0, *((hour + 0.5) / HOURS for hour in range(HOURS)), *(hour / HOURS for hour in range(HOURS))]
    for corner in corners:
        assert DISPLAY_AD_DAY.at(corner - 1e-9) == pytest.approx(DISPLAY_AD_DAY.at(corner + 1e-9), abs=1e-6)
    # No jump anywhere: between neighbouring points of a fine grid it moves by at most its steepest slope.
    points = grid()
    steepest = max(abs(LEVELS[(hour + 1) % HOURS] - LEVELS[hour]) for hour in range(HOURS)) * HOURS
    for here, there in zip(points, [*points[1:], 1.0], strict=True):
        assert abs(DISPLAY_AD_DAY.at(there) - DISPLAY_AD_DAY.at(here)) <= steepest * (there - here) + 1e-12


def test_the_day_is_low_at_night_and_peaks_late_morning_and_evening():
    points = grid()
    values = [DISPLAY_AD_DAY.at(point) for point in points]

    def extreme(pick, first_hour: int, last_hour: int) -> tuple[float, float]:
        window = [(value, point * HOURS) for point, value in zip(points, values, strict=True)]
        return pick((value, hour) for value, hour in window if first_hour <= hour < last_hour)

    trough, trough_hour = min(values), extreme(min, 0, 24)[1]
    assert 0.25 <= trough <= 0.35 and 3 <= trough_hour <= 5
    morning, morning_hour = extreme(max, 6, 15)
    evening, evening_hour = extreme(max, 15, 24)
    assert 1.4 <= morning <= 1.7 and 10 <= morning_hour <= 12
    assert 1.5 <= evening <= 1.7 and 19 <= evening_hour <= 21
    assert max(values) == evening  # the evening is the day's busiest
    assert DISPLAY_AD_DAY.at(15.5 / HOURS) < morning and DISPLAY_AD_DAY.at(15.5 / HOURS) < evening  # two peaks


def test_the_integral_over_a_day_is_one_and_over_each_hour_its_mean():
    for start in (0.0, 0.3, 0.999, 7.25, -2.6):
        assert DISPLAY_AD_DAY.integral(start + 1) - DISPLAY_AD_DAY.integral(start) == pytest.approx(1.0, rel=1e-12)
    assert DISPLAY_AD_DAY.integral(0.0) == 0.0 and DISPLAY_AD_DAY.integral(3.0) == pytest.approx(3.0, rel=1e-12)
    for hour in range(HOURS):
        hour_integral = DISPLAY_AD_DAY.integral((hour + 1) / HOURS) - DISPLAY_AD_DAY.integral(hour / HOURS)
        assert hour_integral == pytest.approx(hour_mean(hour) / HOURS, rel=1e-12)


@pytest.mark.parametrize(
    "fraction", [0.0, 1e-9, 0.5 / HOURS, 4.2 / HOURS, 11.5 / HOURS, 0.5, 0.75, 1 - 1e-12, 1.0, 1.3, 6.999, 365.4]
)
def test_the_inverse_integral_inverts_the_integral(fraction):
    area = DISPLAY_AD_DAY.integral(fraction)
    assert DISPLAY_AD_DAY.inverse_integral(area) == pytest.approx(fraction, rel=1e-9, abs=1e-12)
    assert DISPLAY_AD_DAY.integral(DISPLAY_AD_DAY.inverse_integral(fraction)) == pytest.approx(
        fraction, rel=1e-9, abs=1e-12
    )


def test_a_flat_shape_is_its_own_integral():
    flat = DayShape.of([5.0] * HOURS)
    assert flat.levels == (1.0,) * HOURS
    for fraction in (0.0, 0.01, 0.5, 0.77, 2.5):
        assert flat.at(fraction) == pytest.approx(1.0)
        assert flat.integral(fraction) == pytest.approx(fraction, rel=1e-12, abs=1e-15)
        assert flat.inverse_integral(fraction) == pytest.approx(fraction, rel=1e-12, abs=1e-15)


def test_a_shape_needs_positive_levels_with_mean_one():
    for levels in ([], [1.0, 0.0], [2.0, -1.0], [1.0, math.nan]):
        with pytest.raises(ValueError, match="above 0"):
            DayShape.of(levels)
    with pytest.raises(ValueError, match="mean 1"):
        DayShape((1.0, 2.0))
    with pytest.raises(ValueError, match="rate"):
        VisitSchedule(0.0, DAY_START_S)
    with pytest.raises(ValueError, match="day length"):
        VisitSchedule(1.0, DAY_START_S, CurveKind.DIURNAL, 0.0)


@pytest.mark.parametrize("start_s", [0.0, DAY_START_S, DAY_START_S + 61.3])
def test_flat_visits_are_due_at_n_over_the_rate(start_s):
    for rate in (20.0, 7.0, 0.3, 1_000.0):
        schedule = VisitSchedule(rate, start_s)
        assert [schedule.due_s(n) for n in range(500)] == [n / rate for n in range(500)]
        assert schedule.rate_at(12_345.0) == rate and schedule.visits_owed(10.0) == rate * 10.0


@pytest.mark.parametrize("day_length_s", [240.0, 3_600.0, 86_400.0])
@pytest.mark.parametrize("start_s", [DAY_START_S, DAY_START_S + 61.3, DAY_START_S + 239.999])
def test_a_diurnal_day_owes_the_rate_times_its_length_and_due_times_invert_it(day_length_s, start_s):
    schedule = VisitSchedule(20.0, start_s, CurveKind.DIURNAL, day_length_s)
    for days in (1, 2, 5):
        assert schedule.visits_owed(days * day_length_s) == pytest.approx(20.0 * days * day_length_s, rel=1e-9)
    for number in (1, 17, 1_000, 4_799, 100_000, 2_000_001):
        assert schedule.visits_owed(schedule.due_s(number)) == pytest.approx(number, rel=1e-9)
    for elapsed_s in (0.5, 33.3, day_length_s / 2, 7 * day_length_s + 1):
        assert schedule.due_s(schedule.visits_owed(elapsed_s)) == pytest.approx(elapsed_s, rel=1e-9)
    assert schedule.due_s(0) == pytest.approx(0.0, abs=1e-9)
    due = [schedule.due_s(n) for n in range(2_000)]
    assert all(earlier < later for earlier, later in pairwise(due))


def test_diurnal_visits_fall_in_each_hour_of_the_day_as_the_shape_says():
    rate, day_length_s = 100.0, 240.0  # 24,000 visits a day, a simulated hour every 10 s
    schedule = VisitSchedule(rate, DAY_START_S, CurveKind.DIURNAL, day_length_s)
    per_hour = [0] * HOURS
    number = 0
    while (due_s := schedule.due_s(number)) < day_length_s:
        per_hour[int(due_s // (day_length_s / HOURS))] += 1
        number += 1
    expected = [rate * day_length_s / HOURS * hour_mean(hour) for hour in range(HOURS)]
    # Visit n is due when the integral reaches n, so an hour holds the whole numbers in an interval of
    # its integral's length: that length rounded down or up (a visit due on an hour's very edge, as
    # visit 550 at 10 s, may fall either side in floating point).
    assert all(abs(count - want) <= 1 + 1e-9 for count, want in zip(per_hour, expected, strict=True)), (
        per_hour,
        expected,
    )
    assert sum(per_hour) == rate * day_length_s
    assert per_hour[4] < 0.35 * rate * 10 and per_hour[20] > 1.5 * rate * 10


def test_the_simulated_day_is_aligned_on_whole_days_since_the_epoch():
    at_four_utc = 1_700_006_400 + 4 * 3_600  # 2023-11-15 00:00 UTC, then 04:00
    schedule = VisitSchedule(10.0, at_four_utc + 1_800, CurveKind.DIURNAL)
    assert schedule.slot(0.0) == 4 and schedule.slot(3_600.0) == 5 and schedule.slot(20 * 3_600.0) == 0
    assert schedule.rate_at(0.0) == pytest.approx(10.0 * LEVELS[4], rel=1e-9)
    short = VisitSchedule(10.0, DAY_START_S + 110.0, CurveKind.DIURNAL, 240.0)  # 11:00 of its 240 s day
    assert short.slot(0.0) == 11 and short.slot(130.0) == 0  # the next day starts at DAY_START_S + 240
    assert short.rate_at(5.0) == pytest.approx(10.0 * LEVELS[11], rel=1e-9)
