"""Sliding windows of live performance per campaign x platform, as arrays.

Pure numpy: no I/O, no clock (times are passed in).

A platform is an inventory segment the auction already knows: channel (web, app) x device type
(mobile, desktop, tablet, ctv), eight in all (``PLATFORMS``). A window is ``buckets`` buckets of
``bucket_s`` seconds each (30 of a minute by default) per campaign x platform, a ring: bucket ``i``
of the epoch's ``bucket_s``-second buckets lives in slot ``i % buckets``, and a slot is zeroed when
a newer bucket takes it. Counts are int64: impressions, clicks, conversions and spend in micros
(money is never a float sum). Rows are campaigns, in the order of ``campaign_ids``; a campaign seen
for the first time gets the next row (the arrays grow by doubling).

Beside the buckets the window keeps each cell's **moments** over them, exactly, in int64: the sum of
each metric, and its sums weighted by the bucket's position x (oldest 0, newest ``buckets - 1``) and
by x². A forecast's totals and least-squares trends need nothing else, so a tick reads
(campaigns x platforms x metrics x 3) numbers instead of every bucket. An event adds its value at
its bucket's x; when the window moves a bucket on, the oldest bucket's counts leave the sum and every
other bucket's x drops by one: M1 -= M0, M2 -= 2 M1 - M0 (with M0 already without the bucket that left).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from adstream.events import PLATFORMS

METRICS = ("impressions", "clicks", "conversions", "spend_micros")
IMPRESSIONS, CLICKS, CONVERSIONS, SPEND = range(len(METRICS))
BUCKETS = 30
BUCKET_S = 60


@dataclass
class Windows:
    """Counts per (campaign row, platform, metric, slot); ``add`` folds in a batch of events."""

    buckets: int = BUCKETS
    bucket_s: int = BUCKET_S
    campaign_ids: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    counts: np.ndarray = field(init=False)
    moments: np.ndarray = field(init=False)  # (campaigns, platforms, metrics, 3): sums of value, value x, value x²
    slot_bucket: np.ndarray = field(init=False)  # which epoch bucket each slot holds (-1: none yet)
    latest_bucket: int = -1

    def __post_init__(self) -> None:
        if self.buckets < 2 or self.bucket_s <= 0:
            raise ValueError(
                f"a window needs 2 buckets or more of a positive length, got {self.buckets} x {self.bucket_s}"
            )
        self.counts = np.zeros((16, len(PLATFORMS), len(METRICS), self.buckets), dtype=np.int64)
        self.moments = np.zeros((16, len(PLATFORMS), len(METRICS), 3), dtype=np.int64)
        self.slot_bucket = np.full(self.buckets, -1, dtype=np.int64)

    @property
    def span_s(self) -> int:
        return self.buckets * self.bucket_s

    def row_of(self, campaign_id: str) -> int:
        row = self.rows.get(campaign_id)
        if row is None:
            row = self.rows[campaign_id] = len(self.campaign_ids)
            self.campaign_ids.append(campaign_id)
            if row >= self.counts.shape[0]:
                self.counts, self.moments = (_doubled(array) for array in (self.counts, self.moments))
        return row

    def advance(self, now_s: float) -> None:
        """Moves the window's end to ``now_s`` (seconds since the epoch): slots of buckets that fell out are zeroed."""
        bucket = int(now_s // self.bucket_s)
        if bucket <= self.latest_bucket:
            return
        if bucket - self.latest_bucket >= self.buckets:  # everything held slides out
            self.counts[:] = 0
            self.moments[:] = 0
        else:
            m0, m1, m2 = (self.moments[..., k] for k in range(3))
            for b in range(self.latest_bucket + 1, bucket + 1):
                slot = b % self.buckets  # the oldest bucket's slot, which bucket b takes
                m0 -= self.counts[:, :, :, slot]
                m2 -= 2 * m1 - m0
                m1 -= m0
                self.counts[:, :, :, slot] = 0
        for b in range(max(self.latest_bucket + 1, bucket - self.buckets + 1), bucket + 1):
            self.slot_bucket[b % self.buckets] = b
        self.latest_bucket = bucket

    def add(
        self,
        campaign_ids: Sequence[str],
        platforms: np.ndarray,
        at_s: np.ndarray,
        values: np.ndarray,
    ) -> int:
        """Folds in events: per event its campaign, platform index, time (seconds since the epoch) and a row
        of METRICS values. Events older than the window, of no platform, or ahead of it (a clock's skew,
        folded into the latest bucket) are handled as said; returns how many were counted."""
        if not len(campaign_ids):
            return 0
        at_s = np.asarray(at_s, dtype=np.float64)
        self.advance(float(at_s.max()))
        buckets = (at_s // self.bucket_s).astype(np.int64)
        keep = (np.asarray(platforms) >= 0) & (buckets > self.latest_bucket - self.buckets)
        if not keep.any():
            return 0
        rows = np.fromiter((self.row_of(cid) for cid in campaign_ids), dtype=np.int64, count=len(campaign_ids))
        # One scatter-add per array over the flat index of (row, platform, metric, slot or power), of the
        # nonzero values only: an event carries one or two metrics, and a strided add.at costs 10x more.
        kept = np.asarray(values, dtype=np.int64)[keep]
        event, metric = np.nonzero(kept)
        v = kept[event, metric]
        cell_of_event = rows[keep] * len(PLATFORMS) + np.asarray(platforms, dtype=np.int64)[keep]
        cell = cell_of_event[event] * len(METRICS) + metric
        slot = (buckets % self.buckets)[keep][event]
        x = (self.buckets - 1 - (self.latest_bucket - buckets))[keep][event]
        np.add.at(_flat(self.counts), cell * self.buckets + slot, v)
        powers = np.concatenate([cell * 3, cell * 3 + 1, cell * 3 + 2])
        np.add.at(_flat(self.moments), powers, np.concatenate([v, v * x, v * x * x]))
        return int(keep.sum())

    def positions(self) -> np.ndarray:
        """Each slot's place in time, oldest 0 to newest ``buckets - 1`` (for trends over the ring as it lies)."""
        start = (self.latest_bucket + 1) % self.buckets
        return (np.arange(self.buckets) - start) % self.buckets

    def ordered(self, rows: np.ndarray | None = None) -> np.ndarray:
        """The counts with slots in time order, oldest first: (campaigns, platforms, metrics, buckets)."""
        start = (self.latest_bucket + 1) % self.buckets
        order = (np.arange(self.buckets) + start) % self.buckets
        counts = self.counts[: len(self.campaign_ids)] if rows is None else self.counts[rows]
        return counts[..., order]

    def totals(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Each metric summed over the window: (campaigns, platforms, metrics)."""
        counts = self.counts[: len(self.campaign_ids)] if rows is None else self.counts[rows]
        return counts.sum(axis=-1)


def _flat(array: np.ndarray) -> np.ndarray:
    """A 1-D view of a C-contiguous array (raises rather than copy: the adds must land in the array)."""
    return np.reshape(array, -1, copy=False)


def _doubled(array: np.ndarray) -> np.ndarray:
    grown = np.zeros((2 * array.shape[0], *array.shape[1:]), dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown


def moments_of(counts: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
    """The moments (..., 3) of ``counts`` over its last axis, each bucket at position ``x`` (default: in order)."""
    x = np.arange(counts.shape[-1], dtype=np.int64) if x is None else np.asarray(x, dtype=np.int64)
    return np.stack([counts.sum(-1), (counts * x).sum(-1), (counts * x * x).sum(-1)], axis=-1)
