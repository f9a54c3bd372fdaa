"""The day of daily budgets and pacing: the UTC day by default, shorter and shifted for a simulation."""

from datetime import UTC, date, datetime, timedelta

import pytest

from adstream.days import UTC_DAYS, DayClock


def test_by_default_a_day_is_the_utc_calendar_day():
    at = datetime(2026, 12, 6, 23, 59, 59, tzinfo=UTC)
    assert UTC_DAYS.budget_day(at) == date(2026, 12, 6)
    assert UTC_DAYS.budget_day(at + timedelta(seconds=1)) == date(2026, 12, 7)
    assert UTC_DAYS.start(at) == datetime(2026, 12, 6, tzinfo=UTC)
    assert UTC_DAYS.fraction(datetime(2026, 12, 6, 6, tzinfo=UTC)) == 0.25


def test_a_short_day_from_an_origin_starts_at_the_origin_and_repeats():
    origin = datetime(2026, 12, 6, 10, 17, 30, tzinfo=UTC)
    hours = DayClock(3600, int(origin.timestamp()))
    assert hours.start(origin) == origin and hours.fraction(origin) == 0.0
    assert hours.start(origin + timedelta(minutes=59)) == origin
    assert hours.start(origin + timedelta(minutes=61)) == origin + timedelta(hours=1)
    assert hours.fraction(origin + timedelta(minutes=45)) == 0.75
    # Consecutive days are consecutive dates in the ledger, whatever their length.
    first = hours.budget_day(origin)
    assert hours.budget_day(origin + timedelta(hours=1)) == first + timedelta(days=1)
    assert hours.budget_day(origin - timedelta(seconds=1)) == first - timedelta(days=1)
    start, end = hours.bounds(hours.index(origin))
    assert (start, end) == (origin, origin + timedelta(hours=1))


@pytest.mark.parametrize("length", [0, -5, 1.5])
def test_a_day_length_that_is_not_a_positive_whole_number_is_refused(length):
    with pytest.raises(ValueError, match="day_length_s"):
        DayClock(length)


def test_short_days_are_named_by_dates_too_and_two_runs_never_share_one():
    origin = datetime(2026, 12, 6, 1, 52, 24, tzinfo=UTC)
    minutes = DayClock(180, int(origin.timestamp()))  # millions of days after the epoch
    first, second = minutes.budget_day(origin), minutes.budget_day(origin + timedelta(seconds=180))
    assert second == first + timedelta(days=1)
    later_run = DayClock(180, int(origin.timestamp()) + 3600 + 17)  # an hour later, another phase
    assert later_run.budget_day(origin + timedelta(seconds=3600 + 17)) not in (first, second)
    assert later_run.start(origin + timedelta(seconds=3600 + 17)) == origin + timedelta(seconds=3600 + 17)
