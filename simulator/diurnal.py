"""When each visit of a simulation is due: flat traffic, or a diurnal curve over a simulated day.

Pure functions and frozen values: no I/O, no clock (the run's start is passed in).

- **Day**: as the platform's pacing days (``adstream.days``), day ``i`` is
  ``[origin + i x day_length_s, origin + (i + 1) x day_length_s)`` seconds after the Unix epoch, so the
  fraction of the day at wall time ``t`` is ``((t - origin) mod day_length_s) / day_length_s``; with
  86 400 s from the epoch it is the UTC time of day.
- **Shape**: ``DayShape`` is a multiplier of the mean rate at each fraction of the day: a level per
  equal slot (24 hours), normalised to mean 1, drawn through the slots' centres and joined
  linearly (continuous and periodic: after 23:30 it runs back to 00:30's level). A linear
  piece between two centres averages the two levels, so the curve's mean over a day is the
  levels' mean, 1.
- **Due times**: the rate at wall time ``t`` is ``rate x shape(fraction of the day at t)`` (the flat
  curve: ``rate``). Visit ``n`` is due when the visits owed since the start, the integral of the
  rate, reach ``n``; flat, that is ``n / rate``. The integral is piecewise quadratic, so it
  and its inverse are closed form.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import accumulate, pairwise

# A display-ad day by hour (UTC with a 24 h day), as multipliers of the mean: ads follow people's
# waking hours, least around 04:00 (0.3x), most at 11:00 and, higher, at 20:00 (1.5x and 1.6x).
DISPLAY_AD_HOURS = (
    0.53, 0.39, 0.32, 0.30, 0.29, 0.32, 0.46, 0.70, 0.96, 1.22, 1.42, 1.53,
    1.45, 1.29, 1.17, 1.12, 1.16, 1.27, 1.42, 1.56, 1.64, 1.48, 1.17, 0.83,
)  # fmt: skip


class CurveKind(StrEnum):
    """``adstream simulate --traffic-curve``: the same rate all day, or a day's rise and fall."""

    FLAT = "flat"
    DIURNAL = "diurnal"


@dataclass(frozen=True)
class DayShape:
    """The multiplier of the mean rate over a day; build it with ``DayShape.of(levels)``."""

    levels: tuple[float, ...]  # per slot, mean 1
    # The corners of the curve, in fractions of a day: 0, the slots' centres, 1; its value and its
    # integral from 0 at each.
    _knots: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _values: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _integrals: tuple[float, ...] = field(init=False, repr=False, compare=False)

    @classmethod
    def of(cls, levels: Sequence[float]) -> DayShape:
        """The shape of relative ``levels`` per slot (e.g. per hour), scaled to mean 1."""
        if not levels or any(not 0 < level < math.inf for level in levels):
            raise ValueError("a day shape needs at least one slot and every level above 0")
        mean = math.fsum(levels) / len(levels)
        return cls(tuple(level / mean for level in levels))

    def __post_init__(self) -> None:
        slots = len(self.levels)
        if not slots or any(not 0 < level < math.inf for level in self.levels):
            raise ValueError("a day shape needs at least one slot and every level above 0")
        if not math.isclose(math.fsum(self.levels), slots, rel_tol=1e-12):
            raise ValueError(f"the levels of a day shape must have mean 1, got {math.fsum(self.levels) / slots}")
        midnight = (self.levels[-1] + self.levels[0]) / 2
        knots = (0.0, *((slot + 0.5) / slots for slot in range(slots)), 1.0)
        values = (midnight, *self.levels, midnight)
        pieces = [(b - a) * (u + v) / 2 for (a, u), (b, v) in pairwise(zip(knots, values, strict=True))]
        integrals = (*accumulate(pieces, initial=0.0),)
        object.__setattr__(self, "_knots", knots)
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_integrals", (*integrals[:-1], 1.0))  # exactly 1 over a day

    @property
    def slots(self) -> int:
        return len(self.levels)

    def at(self, fraction: float) -> float:
        """The multiplier at ``fraction`` of a day (any real: the shape repeats every day)."""
        within = fraction - math.floor(fraction)
        piece = self._piece(within)
        start, end = self._knots[piece], self._knots[piece + 1]
        low, high = self._values[piece], self._values[piece + 1]
        return low + (high - low) * (within - start) / (end - start)

    def integral(self, fraction: float) -> float:
        """The integral of the shape from the start of day 0 to ``fraction`` (in days; 1 a whole day)."""
        days = math.floor(fraction)
        within = fraction - days
        piece = self._piece(within)
        low, high = self._values[piece], self._values[piece + 1]
        width, gone = self._knots[piece + 1] - self._knots[piece], within - self._knots[piece]
        return days + self._integrals[piece] + gone * (low + (high - low) * gone / (2 * width))

    def inverse_integral(self, area: float) -> float:
        """The fraction of a day at which ``integral`` reaches ``area``: ``integral``'s inverse."""
        days = math.floor(area)
        left = area - days
        piece = min(bisect_right(self._integrals, left) - 1, len(self._integrals) - 2)
        low, high = self._values[piece], self._values[piece + 1]
        width, owed = self._knots[piece + 1] - self._knots[piece], left - self._integrals[piece]
        # The root of low x g + (high - low) g² / (2 width) = owed, in the form that stays exact when
        # high = low; the discriminant is low² at least when high > low, high² at least when not.
        root = math.sqrt(max(0.0, low * low + 2 * (high - low) * owed / width))
        return days + self._knots[piece] + 2 * owed / (low + root)

    def slot(self, fraction: float) -> int:
        """The slot (e.g. the hour) of the day ``fraction`` falls in."""
        return min(int((fraction - math.floor(fraction)) * self.slots), self.slots - 1)

    def _piece(self, within: float) -> int:
        return min(bisect_right(self._knots, within) - 1, len(self._knots) - 2)


DISPLAY_AD_DAY = DayShape.of(DISPLAY_AD_HOURS)


@dataclass(frozen=True)
class VisitSchedule:
    """When the visits of a run starting at wall time ``start_s`` (seconds since the Unix epoch) are due,
    at a mean of ``rate`` visits per second."""

    rate: float
    start_s: float
    curve: CurveKind = CurveKind.FLAT
    day_length_s: float = 86_400.0
    shape: DayShape = DISPLAY_AD_DAY
    origin_s: float = 0.0  # when a day starts, in seconds since the epoch

    def __post_init__(self) -> None:
        if not 0 < self.rate < math.inf:
            raise ValueError(f"the rate must be above 0, got {self.rate}")
        if not 0 < self.day_length_s < math.inf:
            raise ValueError(f"the day length must be above 0 seconds, got {self.day_length_s}")

    def fraction_of_day(self, elapsed_s: float) -> float:
        """The fraction of its simulated day gone ``elapsed_s`` after the start."""
        return ((self.start_s - self.origin_s + elapsed_s) % self.day_length_s) / self.day_length_s

    def rate_at(self, elapsed_s: float) -> float:
        """Visits per second ``elapsed_s`` after the start."""
        if self.curve is CurveKind.FLAT:
            return self.rate
        return self.rate * self.shape.at(self.fraction_of_day(elapsed_s))

    def visits_owed(self, elapsed_s: float) -> float:
        """The integral of the rate from the start to ``elapsed_s`` after it: visits due by then."""
        if self.curve is CurveKind.FLAT:
            return self.rate * elapsed_s
        start = self.fraction_of_day(0.0)
        days = self.shape.integral(start + elapsed_s / self.day_length_s) - self.shape.integral(start)
        return self.rate * self.day_length_s * days

    def due_s(self, number: int | float) -> float:
        """Seconds after the start when visit ``number`` (from 0) is due: ``visits_owed``'s inverse."""
        if self.curve is CurveKind.FLAT:
            return number / self.rate
        start = self.fraction_of_day(0.0)
        area = self.shape.integral(start) + number / (self.rate * self.day_length_s)
        return (self.shape.inverse_integral(area) - start) * self.day_length_s

    def slot(self, elapsed_s: float) -> int:
        """The slot of the simulated day (the hour, with 24 slots) ``elapsed_s`` after the start."""
        return self.shape.slot(self.fraction_of_day(elapsed_s))
