"""The optimizer's decisions as the auction applies them: a bid per candidate for the request's platform.

Every replica reads the decisions the optimizer wrote to the shared store (``adstream.decisions``) on
its housekeeping tick, re-reading the hash only when the optimizer's version counter moved. For a
campaign snapshot it builds, once, a table of multipliers (campaigns x platforms, millionths) and the
caps from the campaigns' goals. An auction then takes its candidates' column for the request's
platform:

    placed bid = min(base bid x multiplier, max bid, the platform's limit)   (at least one micro)

and pacing's λ applies on top in the auction (``auction_service.serving.auction``), so the bid is base x
multiplier x λ, capped as said. A multiplier of 0 is a pause: the candidate leaves the auction before
it is scored ("optimizer pause"). A campaign without ``goals.optimize``, a request of no platform the
optimizer knows, and a campaign with no decision yet bid their base bid. When the shared store does not
answer, the last decisions read keep serving: the budget check, not the optimizer, guards the money.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import redis
from redis.exceptions import RedisError

from adstream.decisions import MULTIPLIER_SCALE, Served, platform_index, serve_key, unpack_all, version_key
from adstream.events import MAX_BID_MICROS, PLATFORMS
from auction_service.domain import AuctionContext, ServingCampaign

log = logging.getLogger(__name__)

LAGS_KEPT = 2_000


def platform_of(context: AuctionContext) -> int:
    """The request's platform index in PLATFORMS; -1 when it is none of them."""
    return platform_index(context.channel, context.device_type)


@dataclass(frozen=True, eq=False)
class DecisionTable:
    """The multipliers and caps of one campaign snapshot's rows."""

    campaigns: tuple[ServingCampaign, ...]
    multiplier_ppm: np.ndarray  # (campaigns, platforms) int64; MULTIPLIER_SCALE where nothing was decided
    cap_micros: np.ndarray  # (campaigns, platforms) int64: min(max bid, the platform's limit)
    base_bid_micros: np.ndarray  # (campaigns,) int64
    any_decided: bool

    @classmethod
    def of(cls, campaigns: tuple[ServingCampaign, ...], decided: Mapping[str, Served]) -> DecisionTable:
        n, width = len(campaigns), len(PLATFORMS)
        multipliers = np.full((n, width), MULTIPLIER_SCALE, dtype=np.int64)
        caps = np.full((n, width), MAX_BID_MICROS, dtype=np.int64)
        any_decided = False
        for row, campaign in enumerate(campaigns):
            goals = campaign.goals
            if not goals.optimize:
                continue
            decision = decided.get(campaign.campaign_id)
            if decision is not None:
                multipliers[row] = decision.multipliers_ppm
                any_decided = True
            if goals.max_bid_micros is not None:
                caps[row] = goals.max_bid_micros
            for platform, limit in goals.platform_bid_limits_micros.items():
                column = PLATFORMS.index(platform)
                caps[row, column] = min(caps[row, column], limit)
        base = np.fromiter((c.bid_micros for c in campaigns), dtype=np.int64, count=n)
        return cls(campaigns, multipliers, caps, base, any_decided)

    @classmethod
    def none(cls, campaigns: tuple[ServingCampaign, ...]) -> DecisionTable:
        """The table of a snapshot when nothing is decided: every row bids its base bid."""
        empty = np.zeros((0, len(PLATFORMS)), dtype=np.int64)
        return cls(campaigns, empty, empty, np.zeros(0, dtype=np.int64), any_decided=False)

    def placed_bids(self, rows: np.ndarray, platform: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(whether each row still bids, the placed bids of those that do), or None when nothing here is
        decided for ``rows`` on ``platform`` (the auction then runs on the base bids)."""
        if not self.any_decided or platform < 0 or not rows.size:
            return None
        multiplier = self.multiplier_ppm[rows, platform]
        cap = self.cap_micros[rows, platform]
        if (multiplier == MULTIPLIER_SCALE).all() and (cap == MAX_BID_MICROS).all():
            return None
        bidding = multiplier > 0
        placed = self.base_bid_micros[rows] * multiplier // MULTIPLIER_SCALE
        placed = np.clip(np.minimum(placed, cap), 1, MAX_BID_MICROS)
        return bidding, placed[bidding]


class DecisionBook:
    """This replica's copy of the optimizer's decisions (module docstring)."""

    def __init__(self, client: redis.Redis | None, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self._version: bytes | None = None
        self._decided: dict[str, Served] = {}
        self._table: DecisionTable | None = None
        self.reads = 0  # times the hash was read (for /metrics)
        self.decided_campaigns = 0
        # Seconds from the decision's data_until (it had read every event Kafka held before) to this replica serving it:
        # the optimizer's decision latency as serving sees it (the last LAGS_KEPT).
        self.lags_s: deque[float] = deque(maxlen=LAGS_KEPT)

    def read(self) -> None:
        """Re-reads the decisions when the optimizer's version moved; keeps the last ones when the store is down."""
        if self.client is None:
            return
        try:
            version = self.client.get(version_key(self.namespace))
            if version == self._version:
                return
            raw = self.client.hgetall(serve_key(self.namespace))
        except RedisError as exc:
            log.warning("optimizer decisions not read (%s); the last ones serve", type(exc).__name__)
            return
        decided = unpack_all(raw)
        now_us = time.time() * 1_000_000
        for campaign_id, served in decided.items():
            before = self._decided.get(campaign_id)
            if served.data_until_us and (before is None or before.version != served.version):
                self.lags_s.append(max(0.0, (now_us - served.data_until_us) / 1_000_000))
        self._decided = decided
        self._version = version
        self._table = None
        self.reads += 1
        self.decided_campaigns = len(self._decided)

    def lag_quantiles(self) -> dict[str, float] | None:
        """The p50 and p95 of ``lags_s`` and how many, or None before any decision was read."""
        if not self.lags_s:
            return None
        p50, p95 = np.percentile(np.fromiter(self.lags_s, dtype=float), [50, 95])
        return {"p50": float(p50), "p95": float(p95), "decisions": len(self.lags_s)}

    def table(self, campaigns: tuple[ServingCampaign, ...]) -> DecisionTable:
        """The table of ``campaigns`` (rebuilt when the snapshot or the decisions change)."""
        current = self._table
        if current is None or current.campaigns is not campaigns:
            # Snapshots change with every charge: with nothing decided, no pass over the campaigns at all.
            decided = self._decided
            current = self._table = DecisionTable.of(campaigns, decided) if decided else DecisionTable.none(campaigns)
        return current
