"""The state every auction replica shares, in one Redis-protocol store (Redis 7 / Valkey 8).

What it holds, per namespace (SHARED_STORE_NAMESPACE):
- ``spent`` / ``spent:<day>``: each campaign's charged micros, total and per UTC day. A mirror of the
  ledger: raised by each charge (``settle``) and never below what the campaign store says (every hold
  passes the ledger's figures, and the script keeps the larger).
- ``held`` / ``held:<day>``: the micros reserved by served auctions whose billable event has not come;
  ``res`` (auction -> campaign, day, micros) and ``res:exp`` (auction by expiry) are the reservations.
- ``freq:<day>:<user>``: the ads of each campaign served to a user that day (the frequency cap).
- ``auction:<id>``: a served auction, for validating its events on any replica, for
  SERVED_IN_MEMORY_S; after that the campaign store's copy (written behind) answers.

Every decision that must hold across replicas is one server-side script: a hold checks the
total and daily budget (the campaign serves while spent + held < budget, the rule every replica's
pre-filter applies too, so a hold is refused only when another auction took the budget meanwhile)
and the frequency cap, and takes all of them at once, or nothing. The last hold may pass the budget
by its own reservation; the ledger refuses any charge past it (``over_budget``). The ledger stays
the system of record: it never charges past a budget whatever this store says, so losing the store
can cost exposure pacing, never money.
When the store is gone (no ``epoch`` key) the first replica to notice rebuilds it from the campaign
store: spend from the ledger, holds and frequency from today's served auctions.

Lua numbers are doubles: amounts are exact up to 2**53 micros (about $9 billion).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import IntEnum
from typing import Any, TypeVar

import redis
from redis.exceptions import RedisError, ResponseError
from sqlalchemy.orm import Session

from adstream.days import UTC_DAYS, DayClock
from auction_service.campaign_store import store
from auction_service.serving.resp import RespClient, Script

log = logging.getLogger(__name__)
DAY_KEYS_TTL_S = 3 * 24 * 3600  # per-day keys outlive their day (the ledger keeps the history)
REBUILD_LOCK_S = 120  # renewed by every chunk a rebuild writes
REBUILD_CHUNK = 2_000  # reservations or counters per script call of a rebuild
T = TypeVar("T")


READ_FREQUENCY, TAKE_HOLD, READ_SERVED, SETTLE = (
    "read the frequency counters",
    "take the auction's hold",
    "read the served auctions",
    "settle the charges",
)


class SharedStoreUnavailable(RuntimeError):
    """The shared store did not answer in time: the request is refused (503, retry), nothing was changed."""


class HoldRefused(IntEnum):
    """Why a hold was refused by the store (0 is a hold taken)."""

    TOTAL_BUDGET = 1
    DAILY_BUDGET = 2
    FREQUENCY_CAP = 3


_HOLD = """
local ns, cid, amount = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ledger, ledger_day = tonumber(ARGV[6]), tonumber(ARGV[7])
local stored = tonumber(redis.call('HGET', KEYS[1], cid) or '0')
local stored_day = tonumber(redis.call('HGET', KEYS[2], cid) or '0')
local held = tonumber(redis.call('HGET', KEYS[3], cid) or '0')
local held_day = tonumber(redis.call('HGET', KEYS[4], cid) or '0')
if math.max(stored, ledger) + held >= tonumber(ARGV[4]) then return 1 end
if math.max(stored_day, ledger_day) + held_day >= tonumber(ARGV[5]) then return 2 end
local cap = tonumber(ARGV[8])
if cap >= 0 then
  if tonumber(redis.call('HGET', KEYS[7], cid) or '0') >= cap then return 3 end
  redis.call('HINCRBY', KEYS[7], cid, 1)
  redis.call('EXPIRE', KEYS[7], ARGV[13])
end
-- The ledger's figures heal a mirror that missed a charge (a replica killed between commit and settle).
if ledger > stored then redis.call('HSET', KEYS[1], cid, ARGV[6]) end
if ledger_day > stored_day then
  redis.call('HSET', KEYS[2], cid, ARGV[7])
  redis.call('EXPIRE', KEYS[2], ARGV[13])
end
if amount > 0 then
  redis.call('HINCRBY', KEYS[3], cid, amount)
  redis.call('HINCRBY', KEYS[4], cid, amount)
  redis.call('EXPIRE', KEYS[4], ARGV[13])
  redis.call('HSET', KEYS[5], ARGV[9], cid .. '|' .. ARGV[14] .. '|' .. ARGV[3])
  redis.call('ZADD', KEYS[6], ARGV[10], ARGV[9])
end
redis.call('SET', KEYS[8], ARGV[11], 'EX', ARGV[12])
return 0
"""

# Frees one reservation (if it is still held) from the totals; shared by settle and sweep.
_RELEASE = """
local function release(ns, auction)
  local held = redis.call('HGET', ns .. ':res', auction)
  if not held then return 0 end
  local cid, day, amount = string.match(held, '^(.*)|(%d+)|(%d+)$')
  redis.call('HINCRBY', ns .. ':held', cid, -tonumber(amount))
  redis.call('HINCRBY', ns .. ':held:' .. day, cid, -tonumber(amount))
  redis.call('HDEL', ns .. ':res', auction)
  redis.call('ZREM', ns .. ':res:exp', auction)
  return tonumber(amount)
end
"""

# The ledger's totals only grow, so the mirror keeps the largest it was told: a settlement and a hold that
# heals from an older snapshot can come in any order, and a retry changes nothing.
_SETTLE = (
    _RELEASE
    + """
local ns, auction, cid = ARGV[1], ARGV[2], ARGV[3]
local released = release(ns, auction)
local spent, spent_day = tonumber(ARGV[4]), tonumber(ARGV[5])
if spent >= 0 and spent > tonumber(redis.call('HGET', ns .. ':spent', cid) or '0') then
  redis.call('HSET', ns .. ':spent', cid, ARGV[4])
end
local day_key = ns .. ':spent:' .. ARGV[6]
if spent_day >= 0 and spent_day > tonumber(redis.call('HGET', day_key, cid) or '0') then
  redis.call('HSET', day_key, cid, ARGV[5])
  redis.call('EXPIRE', day_key, ARGV[7])
end
return released
"""
)

_SWEEP = (
    _RELEASE
    + """
local ns = ARGV[1]
local due = redis.call('ZRANGEBYSCORE', ns .. ':res:exp', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, auction in ipairs(due) do
  release(ns, auction)
  redis.call('ZREM', ns .. ':res:exp', auction)
end
return #due
"""
)


# A rebuilt reservation counts in the totals only if no hold made it meanwhile: a replica's hold after the
# rebuild's wipe already added it, and the rows the rebuild reads may include it (written behind since).
_RESTORE_RESERVATIONS = """
local ns, ttl = ARGV[1], ARGV[2]
for i = 3, #ARGV, 5 do
  local auction, cid, day, amount = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if redis.call('HSETNX', ns .. ':res', auction, cid .. '|' .. day .. '|' .. amount) == 1 then
    redis.call('HINCRBY', ns .. ':held', cid, amount)
    redis.call('HINCRBY', ns .. ':held:' .. day, cid, amount)
    redis.call('EXPIRE', ns .. ':held:' .. day, ttl)
    redis.call('ZADD', ns .. ':res:exp', ARGV[i + 4], auction)
  end
end
return 0
"""

# A counter takes the larger of its own and the campaign store's count: a rebuild done again after one was
# cut off counts nothing twice, and a hold taken meanwhile that the store has not seen yet is not undone.
_RESTORE_FREQUENCY = """
local ttl = ARGV[1]
for i = 2, #ARGV, 3 do
  local key, cid, count = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  if tonumber(redis.call('HGET', key, cid) or '0') < count then redis.call('HSET', key, cid, count) end
  redis.call('EXPIRE', key, ttl)
end
return 0
"""


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


@functools.lru_cache(maxsize=16)  # every hold names one or two days: strftime once per day, not per auction
def day_tag(day: date) -> str:
    return day.strftime("%Y%m%d")


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Hold:
    """What a filled auction takes from the shared state, all or nothing."""

    served: store.ServedAuctionRow
    total_budget_micros: int
    daily_budget_micros: int
    ledger_spent_micros: int  # the campaign store's figures, as this replica last loaded them
    ledger_spent_today_micros: int
    frequency_cap: int | None  # None: no user to count
    # The budget day ledger_spent_today_micros is of (None: the auction's). A snapshot loaded the day before
    # says nothing of this day's spend: taken as this day's, it would hold the campaign at yesterday's spend.
    ledger_day: date | None = None


@dataclass(frozen=True, slots=True)
class Settlement:
    """An auction whose billable event the ledger decided: its reservation goes, and the spend mirror
    takes the ledger's totals after the charge (-1: unknown, a retry answered from the journal)."""

    auction_id: str
    campaign_id: str
    day: date  # the event's budget day, the ledger's
    ledger_spent_micros: int = -1
    ledger_spent_today_micros: int = -1


def pack_served(row: store.ServedAuctionRow) -> bytes:
    fields = list(row.packed())
    return json.dumps([value.isoformat() if isinstance(value, datetime) else value for value in fields]).encode()


_SERVED_TIMES = ("served_at", "expires_at")


def unpack_served(payload: bytes) -> store.ServedAuctionRow:
    # zip, not strict: a replica of the release before writes fewer fields, the ones added last default
    values = dict(zip(store.ServedAuctionRow.__dataclass_fields__, json.loads(payload), strict=False))
    for name in _SERVED_TIMES:
        values[name] = datetime.fromisoformat(values[name])
    return store.ServedAuctionRow(**values)


class SharedBooks:
    """The replicas' shared books: holds, settlements, frequency and served auctions (module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        timeout_s: float,
        served_s: int,
        auction_ttl_s: int,
        days: DayClock = UTC_DAYS,
    ) -> None:
        self.ns = namespace
        self.served_s, self.auction_ttl_s = served_s, auction_ttl_s
        self.days = days  # of daily budgets (held and spent per day); frequency is per UTC day
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=0
        )
        self._hold = self.client.register_script(_HOLD)
        self._settle = self.client.register_script(_SETTLE)
        self._sweep = self.client.register_script(_SWEEP)
        self._restore_reservations = self.client.register_script(_RESTORE_RESERVATIONS)
        self._restore_frequency = self.client.register_script(_RESTORE_FREQUENCY)
        self._url, self._timeout_s = url, timeout_s
        self._async: tuple[asyncio.AbstractEventLoop, RespClient] | None = None
        self._hold_script, self._settle_script = Script(_HOLD), Script(_SETTLE)  # the request path's

    def _on_loop(self) -> RespClient:
        """The request path's client, of the running event loop (its connection belongs to that loop):
        an auction waits on the store without holding up the others."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            self._async = (loop, RespClient(self._url, self._timeout_s))
        return self._async[1]

    def key(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    def _call(self, what: str, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except RedisError as exc:
            raise SharedStoreUnavailable(f"the shared store did not {what} ({exc.__class__.__name__})") from exc

    async def _await(self, what: str, pending):
        try:
            return await pending
        except (TimeoutError, RedisError, OSError) as exc:
            raise SharedStoreUnavailable(f"the shared store did not {what} ({exc.__class__.__name__})") from exc

    # --- the auction ---

    def _frequency_key(self, user_id: str, day: date) -> str:
        return self.key("freq", day_tag(day), user_id)

    @staticmethod
    def _counts(seen: Mapping[bytes, bytes]) -> dict[str, int]:
        return {campaign.decode(): int(count) for campaign, count in seen.items()}

    def frequency_today(self, user_id: str | None, day: date) -> dict[str, int]:
        """The ads of each campaign served to ``user_id`` on ``day``."""
        if user_id is None:
            return {}
        return self._counts(self._call(READ_FREQUENCY, self.client.hgetall, self._frequency_key(user_id, day)))

    async def frequency_today_async(self, user_id: str | None, day: date) -> dict[str, int]:
        if user_id is None:
            return {}
        reply = await self._await(READ_FREQUENCY, self._on_loop().execute("HGETALL", self._frequency_key(user_id, day)))
        return {reply[i].decode(): int(reply[i + 1]) for i in range(0, len(reply), 2)}

    def _hold_command(self, hold: Hold) -> dict[str, list]:
        served = hold.served
        budget_day = self.days.budget_day(served.served_at)
        day = day_tag(budget_day)
        ledger_today = hold.ledger_spent_today_micros if hold.ledger_day in (None, budget_day) else -1
        frequency_day = day_tag(served.served_at.astimezone(UTC).date())
        user = served.user_id if hold.frequency_cap is not None else None
        keys = [
            self.key("spent"), self.key("spent", day), self.key("held"), self.key("held", day), self.key("res"),
            self.key("res", "exp"), self.key("freq", frequency_day, user or "-"),
            self.key("auction", served.auction_id),
        ]  # fmt: skip
        args = [
            self.ns, served.campaign_id, served.reserved_micros, hold.total_budget_micros, hold.daily_budget_micros,
            hold.ledger_spent_micros, ledger_today, -1 if user is None else hold.frequency_cap,
            served.auction_id, _ms(served.expires_at), pack_served(served), self.served_s, DAY_KEYS_TTL_S, day,
        ]  # fmt: skip
        return {"keys": keys, "args": args}

    def hold(self, hold: Hold) -> HoldRefused | None:
        """Takes the auction's reservation, frequency slot and served record at once; why not, when refused."""
        refused = int(self._call(TAKE_HOLD, self._hold, **self._hold_command(hold)))
        return HoldRefused(refused) if refused else None

    async def hold_async(self, hold: Hold) -> HoldRefused | None:
        refused = int(await self._await(TAKE_HOLD, self._hold_script(self._on_loop(), **self._hold_command(hold))))
        return HoldRefused(refused) if refused else None

    # --- events ---

    def _served_rows(self, auction_ids: Sequence[str], payloads: list[bytes | None]) -> dict:
        return {a: None if p is None else unpack_served(p) for a, p in zip(auction_ids, payloads, strict=True)}

    def served(self, auction_ids: Sequence[str]) -> dict[str, store.ServedAuctionRow | None]:
        keys = [self.key("auction", a) for a in auction_ids]
        return self._served_rows(auction_ids, self._call(READ_SERVED, self.client.mget, keys))

    async def served_async(self, auction_ids: Sequence[str]) -> dict[str, store.ServedAuctionRow | None]:
        keys = [self.key("auction", a) for a in auction_ids]
        return self._served_rows(auction_ids, await self._await(READ_SERVED, self._on_loop().execute("MGET", *keys)))

    def _settle_args(self, settled: Settlement) -> list:
        return [self.ns, settled.auction_id, settled.campaign_id, settled.ledger_spent_micros,
                settled.ledger_spent_today_micros, day_tag(settled.day), DAY_KEYS_TTL_S]  # fmt: skip

    def settle(self, settlements: Iterable[Settlement]) -> None:
        """Frees the auctions' reservations and raises the spend mirror to the ledger's totals after each charge."""
        pipe = self.client.pipeline(transaction=False)
        for settled in settlements:
            self._settle(keys=[], args=self._settle_args(settled), client=pipe)
        self._call(SETTLE, pipe.execute)

    async def settle_async(self, settlements: Iterable[Settlement]) -> None:
        client, script = self._on_loop(), self._settle_script
        commands = [script.command([], self._settle_args(settled)) for settled in settlements]
        if commands:
            await self._await(SETTLE, self._settle_all(client, commands))

    async def _settle_all(self, client: RespClient, commands: list[tuple[Any, ...]]) -> None:
        try:
            await client.execute_many(commands)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            await self._settle_script.load(client)  # the server restarted: a settlement is safe to repeat
            await client.execute_many(commands)

    # --- housekeeping ---

    def sweep(self, now: datetime, limit: int = 5000) -> int:
        """Frees the reservations past their auction's TTL, whoever held them; returns how many."""
        return int(self._call("sweep the reservations", self._sweep, keys=[], args=[self.ns, _ms(now), limit]))

    def exposure(self, day: date) -> tuple[dict[str, int], dict[str, int], dict[str, int], dict[str, int]]:
        """Held and spent micros per campaign, total and on ``day``: what every auction's pre-filter reads."""
        pipe = self.client.pipeline(transaction=False)
        for name in (("held",), ("held", day_tag(day)), ("spent",), ("spent", day_tag(day))):
            pipe.hgetall(self.key(*name))
        tables = self._call("read the exposure", pipe.execute)
        return tuple({k.decode(): int(v) for k, v in table.items()} for table in tables)  # type: ignore[return-value]

    def ping(self) -> str:
        try:
            self.client.ping()
        except RedisError as exc:
            return f"the shared store does not answer ({exc.__class__.__name__})"
        return "ok"

    def built(self) -> bool:
        return bool(self._call("read its epoch", self.client.exists, self.key("epoch")))

    def rebuild(self, snapshot: RebuildSource) -> bool:
        """Rebuilds a lost store from the campaign store; False when another replica is at it or it was built.

        The open reservations and counters are streamed in chunks (an hour of a fleet's auctions does not fit
        a replica's memory); ``epoch`` is written last, so a rebuild cut off is done again by the next replica.
        """
        lock = self.key("rebuilding")
        if self.built() or not self._call("lock the rebuild", self.client.set, lock, "1", nx=True, ex=REBUILD_LOCK_S):
            return False
        try:
            pipe = self.client.pipeline(transaction=True)
            # Every day an open reservation may be on: a rebuild cut off and done again adds nothing twice.
            days = [snapshot.day - timedelta(days=n) for n in range((snapshot.day - snapshot.first_day).days + 1)]
            for name in (("spent",), ("spent", day_tag(snapshot.day)), ("held",), ("res",), ("res", "exp")):
                pipe.delete(self.key(*name))
            for day in days:
                pipe.delete(self.key("held", day_tag(day)))
            if snapshot.spent:
                pipe.hset(self.key("spent"), mapping=dict(snapshot.spent))
            if snapshot.spent_today:
                pipe.hset(self.key("spent", day_tag(snapshot.day)), mapping=dict(snapshot.spent_today))
            self._call("rebuild", pipe.execute)
            for chunk in _chunks(snapshot.open_auctions, REBUILD_CHUNK):
                args: list[Any] = [self.ns, DAY_KEYS_TTL_S]
                for row in chunk:
                    if row.reserved_micros > 0:
                        served_day = day_tag(self.days.budget_day(row.served_at))
                        args += [row.auction_id, row.campaign_id, served_day, row.reserved_micros, _ms(row.expires_at)]
                self._restore_chunk(self._restore_reservations, args, lock)
            freq_day = day_tag(snapshot.frequency_day)
            for chunk in _chunks(snapshot.frequency, REBUILD_CHUNK):
                args = [DAY_KEYS_TTL_S]
                for user_id, campaign_id, count in chunk:
                    args += [self.key("freq", freq_day, user_id), campaign_id, count]
                self._restore_chunk(self._restore_frequency, args, lock)
            self._call("rebuild", self.client.set, self.key("epoch"), datetime.now(UTC).isoformat())
        finally:
            self._call("unlock the rebuild", self.client.delete, lock)
        return True

    def _restore_chunk(self, script: Any, args: list[Any], lock: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        script(keys=[], args=args, client=pipe)
        pipe.expire(lock, REBUILD_LOCK_S)  # still at it: the others keep waiting
        self._call("rebuild", pipe.execute)

    def close(self) -> None:
        self.client.close()
        if self._async is not None:
            self._async[1].close()
        self._async = None


@dataclass(frozen=True)
class RebuildSource:
    """What the campaign store knows of today, to rebuild a lost shared store (``rebuild_source``)."""

    day: date  # the budget day (``adstream.days``)
    first_day: date  # the budget day of the oldest auction whose reservation may be open
    spent: Mapping[str, int]
    spent_today: Mapping[str, int]
    open_auctions: Iterable[store.OpenReservation]  # served, unexpired, their billable event not charged
    frequency: Iterable[tuple[str, str, int]]  # (user, campaign, ads served today)
    frequency_day: date  # the UTC day the frequency counts are for


def rebuild_source(session: Session, now: datetime, auction_ttl_s: int, days: DayClock = UTC_DAYS) -> RebuildSource:
    """Today's figures from the campaign store; the reservations and counters are read as the rebuild goes,
    so ``session`` stays open until it is done."""
    day, since = days.budget_day(now), now - timedelta(seconds=auction_ttl_s)
    spent, spent_today = store.spend_totals(session, day)
    utc_day = now.astimezone(UTC).date()
    return RebuildSource(
        day=day,
        first_day=days.budget_day(since),
        spent=spent,
        spent_today=spent_today,
        open_auctions=store.open_reservations(session, since, now),
        frequency=store.served_per_user(session, datetime(utc_day.year, utc_day.month, utc_day.day, tzinfo=UTC)),
        frequency_day=utc_day,
    )
