"""What an auction replica keeps between requests: its copy of the shared exposure, the costs, the counters.

Exposure (documented in the README): a campaign serves an auction only while
``spent + reserved + this auction's reservation <= budget`` (total and daily), checked and taken at once
in the shared store (``auction_service.serving.shared``) that every replica uses. Every filled auction
reserves the *expected* cost of its billable event (CPM: the impression's price; CPC: price x pCTR;
CPA: price x pCTR x pCVR) until that event is charged or refused, or the auction expires
(AUCTION_TTL_S). The reservations pace exposure: the ledger never charges past a budget (a charge
that does not fit is recorded ``over_budget``), so the overspend bound is zero whatever they say.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np

from adstream.events import PricingModel
from auction_service.domain import fits_int64


def billable_cost_micros(pricing_model: PricingModel | str, clearing_price_micros: int) -> int:
    """What one billable event costs. CPM prices are per thousand impressions: the impression
    costs a thousandth, rounded up to a whole micro so a campaign is never charged less than it cleared."""
    if PricingModel(pricing_model) is PricingModel.CPM:
        return -(-clearing_price_micros // 1000)
    return clearing_price_micros


def expected_cost_micros(
    pricing_model: PricingModel | str, clearing_price_micros: int, pctr: float, pcvr: float
) -> int:
    """The reservation a filled auction holds until its billable event arrives or it expires."""
    cost = billable_cost_micros(pricing_model, clearing_price_micros)
    model = PricingModel(pricing_model)
    if model is PricingModel.CPM:
        return cost
    # Decimal of the shortest float repr: 0.05 x 0.1 is 0.005 here, not 0.005000000000000001.
    probability = Decimal(repr(pctr)) if model is PricingModel.CPC else Decimal(repr(pctr)) * Decimal(repr(pcvr))
    return min(cost, math.ceil(cost * probability))


@dataclass
class ExposureBook:
    """This replica's copy of the exposure the shared store holds per campaign: reserved micros, plus spend
    the campaign snapshot does not show yet. Refreshed every housekeeping tick (``replace``); an auction's
    pre-filter reads it, and the shared store's hold is the exact check. Reads are lock-free.

    The totals are kept twice: exactly, by campaign id, and as an int64 array by campaign
    slot, which an auction reads for all its candidates with one numpy gather
    (``held_by_row``) instead of a dict lookup per candidate.
    """

    reserved_micros: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _slots: dict[str, int] = field(default_factory=dict)
    _held: np.ndarray = field(default_factory=lambda: np.zeros(1024, dtype=np.int64))
    _beyond_int64: bool = False  # a total outgrew int64 once: only the exact totals are read from then on
    _row_slots: tuple[np.ndarray, np.ndarray] | None = None  # (an index's campaign ids, their slots)

    def replace(self, totals: dict[str, int]) -> None:
        """Makes ``totals`` the exposure of every campaign (those absent hold nothing)."""
        with self._lock:
            for campaign in self.reserved_micros.keys() - totals.keys():
                self._set(campaign, 0)
            for campaign, total in totals.items():
                self._set(campaign, total)

    def _set(self, campaign_id: str, total: int) -> None:
        if total > 0:
            self.reserved_micros[campaign_id] = total
        else:
            self.reserved_micros.pop(campaign_id, None)
        if not fits_int64(total):
            self._beyond_int64 = True
            return
        slot = self._slot(campaign_id)  # first: it may replace the array
        self._held[slot] = max(total, 0)

    def _slot(self, campaign_id: str) -> int:
        slot = self._slots.get(campaign_id)
        if slot is None:
            slot = self._slots[campaign_id] = len(self._slots)
            if slot == len(self._held):
                # Readers holding the old array see it as it was: the bound's one-auction lag.
                self._held = np.concatenate([self._held, np.zeros(len(self._held), dtype=np.int64)])
        return slot

    def held_by_row(self, campaign_ids: np.ndarray) -> np.ndarray | None:
        """The reserved micros of each of ``campaign_ids`` (an index's, by row), or None when a total
        does not fit int64 (the caller then reads ``reserved_micros``)."""
        row_slots = self._row_slots
        if row_slots is None or row_slots[0] is not campaign_ids:
            with self._lock:
                slots = np.array([self._slot(c) for c in campaign_ids.tolist()], dtype=np.intp)
                row_slots = self._row_slots = (campaign_ids, slots)
        if self._beyond_int64:
            return None
        return self._held[row_slots[1]]


LATENCY_WINDOW = 2048  # the newest auctions whose latency /v1/stats summarizes


@dataclass
class AuctionStats:
    """The figures of GET /v1/stats since the service started (this replica's), and the latency of its newest
    LATENCY_WINDOW auctions."""

    requests: int = 0
    filled: int = 0
    no_fill: int = 0
    pctr_sum: float = 0.0  # of winners
    candidates_scored: int = 0
    events: Counter[str] = field(default_factory=Counter)
    rejected_events: Counter[str] = field(default_factory=Counter)
    openrtb_no_bids: Counter[str] = field(default_factory=Counter)  # by kind (openrtb.no_bid_kind)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def auction(self, filled: bool, pctr: float | None, scored: int, latency_ms: float | None = None) -> None:
        with self._lock:
            self.requests += 1
            self.candidates_scored += scored
            if latency_ms is not None:
                self.latencies_ms.append(latency_ms)
            if filled:
                self.filled += 1
                self.pctr_sum += pctr or 0.0
            else:
                self.no_fill += 1

    def no_bid(self, kind: str) -> None:
        with self._lock:
            self.openrtb_no_bids[kind] += 1

    def event(self, status: str, reason: str | None = None) -> None:
        with self._lock:
            self.events[status] += 1
            if reason:
                self.rejected_events[reason] += 1

    @property
    def fill_rate(self) -> float:
        return self.filled / self.requests if self.requests else 0.0

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "auctions": self.requests,
                "filled": self.filled,
                "no_fill": self.no_fill,
                "fill_rate": self.fill_rate,
                "average_pctr": self.pctr_sum / self.filled if self.filled else None,
                "candidates_scored": self.candidates_scored,
                "events": dict(self.events),
                "rejected_events_by_reason": dict(self.rejected_events),
                "openrtb_no_bids": dict(self.openrtb_no_bids),
                "latency_ms": latency_percentiles(sorted(self.latencies_ms)),
            }


def latency_percentiles(ordered: list[float]) -> dict[str, float | int] | None:
    """p50/p95/p99 of sorted values (nearest rank), and how many there were; None for none."""
    if not ordered:
        return None
    rank = lambda q: ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]  # noqa: E731
    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "auctions": len(ordered)}
