"""The day of daily budgets and pacing: ``DayClock``.

A day is DAY_LENGTH seconds long and a day starts at the origin: day i is
``[phase + i x length, phase + (i + 1) x length)`` seconds after the Unix epoch, where the phase is the
origin modulo the length, so days are counted from the epoch whatever the origin (a run on a store
that holds an earlier run's days never reuses one of them). The defaults (86,400 s from the epoch)
make it the UTC calendar day. A simulation shortens it (PACING_DAY_LENGTH_S) so that one
run plays out a whole day, and moves the origin (PACING_DAY_ORIGIN_S) so that the run's first
day starts when its traffic does. Only daily budgets, pacing plans and the simulator's traffic
curve follow this clock; frequency caps, bills and partitions keep the UTC day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

DAY_LENGTH_S = 86_400
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = _EPOCH.date().toordinal()
_LAST_ORDINAL = date.max.toordinal()
_MICROSECOND = timedelta(microseconds=1)
MICROS_PER_S = 1_000_000


def micros_since_epoch(at: datetime) -> int:
    """Exact integer microseconds since the Unix epoch (a naive time is UTC)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (at - _EPOCH) // _MICROSECOND


def at_micros(micros: int) -> datetime:
    return _EPOCH + micros * _MICROSECOND


def check_day_length(day_length_s: int) -> None:
    if not (isinstance(day_length_s, int) and day_length_s > 0):
        raise ValueError(f"day_length_s must be a positive whole number of seconds, got {day_length_s!r}")


class _DaySettings(Protocol):
    pacing_day_length_s: int
    pacing_day_origin_s: int


@dataclass(frozen=True, slots=True)
class DayClock:
    length_s: int = DAY_LENGTH_S
    origin_s: int = 0  # seconds since the epoch at which a day starts

    def __post_init__(self) -> None:
        check_day_length(self.length_s)

    @classmethod
    def of(cls, settings: _DaySettings) -> DayClock:
        return cls(settings.pacing_day_length_s, settings.pacing_day_origin_s)

    @property
    def phase_s(self) -> int:
        """Where in the epoch-aligned grid of days the origin falls: days start at phase + i x length."""
        return self.origin_s % self.length_s

    def index(self, at: datetime) -> int:
        """The day ``at`` falls in, counted from the epoch (so two runs' days never share an index)."""
        return (micros_since_epoch(at) - self.phase_s * MICROS_PER_S) // (self.length_s * MICROS_PER_S)

    def bounds(self, index: int) -> tuple[datetime, datetime]:
        """The start (included) and end (excluded) of day ``index``."""
        start = (self.phase_s + index * self.length_s) * MICROS_PER_S
        return at_micros(start), at_micros(start + self.length_s * MICROS_PER_S)

    def start(self, at: datetime) -> datetime:
        return self.bounds(self.index(at))[0]

    def fraction(self, at: datetime) -> float:
        """The share of ``at``'s day gone at ``at``, in [0, 1)."""
        gone = micros_since_epoch(at) - micros_since_epoch(self.start(at))
        return gone / (self.length_s * MICROS_PER_S)

    def budget_day(self, at: datetime) -> date:
        """Day ``index(at)`` as the ledger's ``day`` column holds it: the date that many days after the epoch.
        With the defaults that is the UTC date; consecutive days stay consecutive dates."""
        # Wrapped within what a date holds: a 3-minute day is some 10 million days after the epoch, and
        # the names repeat only after 3.6 million days (10,000 years of 24-hour days).
        return date.fromordinal(1 + (_EPOCH_ORDINAL - 1 + self.index(at)) % _LAST_ORDINAL)


UTC_DAYS = DayClock()
