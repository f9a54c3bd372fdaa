"""Who is calling the auction endpoints: API keys checked in memory, reloaded from the campaign store.

Every key in force (one row per publisher or exchange key, a few hundred at most) is held
in memory and reloaded from the store every ``KEYS_TTL_S``, in a thread and in the
background, while requests go on with the keys already loaded. So an auction pays a dict
lookup and a constant-time comparison, never a store round trip; a key made by
``adstream callers add`` works, and a revoked one is refused, within ``KEYS_TTL_S`` of the
change; and a flood of made-up keys never reaches the store. Only the first request waits,
for the first load; if the store is down then, it gets the store's 503.

When a reload fails (the store is down) the keys loaded before stay in force, so auctions
keep serving through a store outage; the reload is tried again every ``KEYS_TTL_S``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from adstream.settings import Settings
from auction_service.campaign_store import callers
from auction_service.campaign_store.callers import ActiveKey, CallerPolicy

log = logging.getLogger(__name__)
KEYS_TTL_S = 5.0
MAX_ADMITTED = 4096  # presented keys remembered as admitted; a fleet of callers has a few hundred

# A caller without a key, in local mode with AUCTION_ALLOW_ANONYMOUS: any floor, either auction type.
ANONYMOUS_LOCAL = CallerPolicy(caller_id=None, max_floor_cpm_micros=None, first_price_allowed=True)


def anonymous_policy(settings: Settings) -> CallerPolicy | None:
    """The policy of a request without a key: ``ANONYMOUS_LOCAL`` in local mode with AUCTION_ALLOW_ANONYMOUS,
    else None (the request is refused)."""
    return ANONYMOUS_LOCAL if settings.is_local and settings.auction_allow_anonymous else None


class CallerKeys:
    """The keys in force, by key id, as of the last load (see the module docstring)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        ttl_s: float = KEYS_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions, self._ttl_s, self._clock = sessions, ttl_s, clock
        self._keys: dict[str, ActiveKey] | None = None
        # Presented keys already admitted since the last load, so a caller's later auctions skip the hash.
        # Only admitted keys enter it: made-up keys cannot grow it. Emptied at every load, so a revoked
        # key leaves it with the reload that drops it.
        self._admitted: dict[str, CallerPolicy] = {}
        self._fresh_until = 0.0
        self._reload: asyncio.Task[None] | None = None

    async def policy(self, api_key: str) -> CallerPolicy | None:
        """The policy of a presented key, or None when it is malformed, unknown, revoked or its secret is wrong."""
        keys = self._keys
        if keys is None or self._clock() >= self._fresh_until:
            keys = await self._current()
        admitted = self._admitted.get(api_key)
        if admitted is not None:
            return admitted
        split = callers.split_key(api_key)
        if split is None:
            return None
        key = keys.get(split[0])
        if key is None or not key.admits(split[1]):
            return None
        if len(self._admitted) < MAX_ADMITTED:
            self._admitted[api_key] = key.policy
        return key.policy

    async def _current(self) -> dict[str, ActiveKey]:
        if self._reload is None:
            self._reload = asyncio.get_running_loop().create_task(self._load())
        if self._keys is None:
            # shield: a request that goes away must not cancel the load the others wait for.
            await asyncio.shield(self._reload)
            assert self._keys is not None  # a failed first load raised above
        return self._keys

    async def _load(self) -> None:
        try:
            keys = await asyncio.to_thread(self._read)
        except Exception:
            if self._keys is None:
                raise  # nothing to serve with: the waiting requests get the store's error (503)
            log.exception("API keys not reloaded; the %d keys loaded before stay in force", len(self._keys))
        else:
            self._keys, self._admitted = keys, {}
        finally:
            self._fresh_until = self._clock() + self._ttl_s
            self._reload = None

    def _read(self) -> dict[str, ActiveKey]:
        with self._sessions() as session:
            return callers.active_keys(session)
