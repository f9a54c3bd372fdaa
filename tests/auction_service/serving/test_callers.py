"""The auction service's key cache over a real SQLite store: what it admits, when it reloads, and store outages."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy.exc import OperationalError

from adstream.settings import Environment
from auction_service.campaign_store import callers
from auction_service.campaign_store.callers import CallerKind, CallerPolicy
from auction_service.campaign_store.db import make_engine, make_session_factory, migrate
from auction_service.serving import openrtb
from auction_service.serving.callers import ANONYMOUS_LOCAL, CallerKeys, anonymous_policy
from tests.conftest import make_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingSessions:
    """The store's session factory, counting the sessions opened (one per load of the keys)."""

    def __init__(self, sessions) -> None:
        self.sessions, self.opened, self.down = sessions, 0, False

    def __call__(self):
        self.opened += 1
        if self.down:
            raise OperationalError("connect", {}, Exception("the store is down"))
        return self.sessions()


@pytest.fixture
def sessions(tmp_path):
    settings = make_settings(tmp_path, campaign_db_url=f"sqlite:///{tmp_path / 'campaigns.db'}")
    engine = make_engine(settings)
    migrate(settings, engine)
    yield make_session_factory(engine)
    engine.dispose()


def add(sessions, caller_id: str = "pub-news") -> callers.IssuedKey:
    with sessions() as session:
        return callers.create_key(
            session,
            caller_id=caller_id,
            kind=CallerKind.PUBLISHER,
            max_floor_cpm_micros=2_000_000,
            first_price_allowed=False,
        )


def revoke(sessions, key_id: str) -> None:
    with sessions() as session:
        callers.revoke_key(session, key_id)


async def reloaded(counting: CountingSessions, loads: int) -> None:
    """Waits for the background reload (a thread, then the event loop) to have opened its session and finished."""
    for _ in range(500):
        if counting.opened >= loads:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)


def test_keys_are_read_once_per_ttl_and_a_change_shows_after_the_next_reload(sessions):
    issued = add(sessions)
    counting, clock = CountingSessions(sessions), Clock()
    keys = CallerKeys(counting, ttl_s=5.0, clock=clock)

    async def scenario() -> None:
        assert await keys.policy(issued.api_key) == CallerPolicy("pub-news", 2_000_000, False)
        for _ in range(50):
            assert await keys.policy(issued.api_key) is not None
            assert await keys.policy(f"{'0' * 16}.made-up") is None  # an unknown key id costs no read
        assert counting.opened == 1
        revoke(sessions, issued.key_id)
        newcomer = add(sessions, "pub-late")
        clock.now += 4.9
        assert await keys.policy(issued.api_key) is not None  # still within the TTL
        assert await keys.policy(newcomer.api_key) is None
        clock.now += 0.2
        await keys.policy(issued.api_key)  # past it: starts the reload, answers from the keys it has
        await reloaded(counting, 2)
        assert counting.opened == 2
        assert await keys.policy(issued.api_key) is None
        assert await keys.policy(newcomer.api_key) == CallerPolicy("pub-late", 2_000_000, False)

    asyncio.run(scenario())


def test_a_wrong_secret_or_a_malformed_key_is_not_admitted(sessions):
    issued = add(sessions)
    keys = CallerKeys(sessions)
    secret = issued.api_key.split(".", 1)[1]

    async def scenario() -> None:
        assert await keys.policy(f"{issued.key_id}.{secret[::-1]}") is None
        assert await keys.policy(issued.key_id) is None
        assert await keys.policy(secret) is None
        assert await keys.policy(issued.api_key) is not None
        # Once the key is admitted (and remembered), a wrong secret under its id still is not.
        assert await keys.policy(issued.api_key) is not None
        assert await keys.policy(f"{issued.key_id}.{secret[::-1]}") is None

    asyncio.run(scenario())


def test_a_store_outage_keeps_the_keys_loaded_before_and_the_first_load_raises(sessions):
    issued = add(sessions)
    counting, clock = CountingSessions(sessions), Clock()

    async def scenario() -> None:
        keys = CallerKeys(counting, ttl_s=5.0, clock=clock)
        assert await keys.policy(issued.api_key) is not None
        counting.down = True
        clock.now += 6
        assert await keys.policy(issued.api_key) is not None
        await reloaded(counting, 2)
        assert counting.opened == 2  # the reload was tried, and failed
        assert await keys.policy(issued.api_key) is not None  # the keys loaded before stay in force

        cold = CallerKeys(counting, ttl_s=5.0, clock=clock)
        with pytest.raises(OperationalError):  # the route answers it with the store's 503
            await cold.policy(issued.api_key)
        counting.down = False
        assert await cold.policy(issued.api_key) is not None  # the next request loads again

    asyncio.run(scenario())


def test_concurrent_first_requests_share_one_load(sessions):
    issued = add(sessions)
    counting = CountingSessions(sessions)
    keys = CallerKeys(counting)

    async def scenario() -> list[CallerPolicy | None]:
        return await asyncio.gather(*(keys.policy(issued.api_key) for _ in range(20)))

    assert all(policy is not None for policy in asyncio.run(scenario()))
    assert counting.opened == 1


@pytest.mark.parametrize(
    ("environment", "allow", "expected"),
    [
        (Environment.LOCAL, True, ANONYMOUS_LOCAL),
        (Environment.LOCAL, False, None),
        (Environment.PROD, True, None),
        (Environment.PROD, False, None),
    ],
)
def test_anonymous_callers_are_served_only_in_local_mode_when_allowed(tmp_path, environment, allow, expected):
    settings = make_settings(tmp_path).model_copy(
        update={"adstream_env": environment, "auction_allow_anonymous": allow}
    )
    assert anonymous_policy(settings) is expected


def test_an_openrtb_floor_is_capped_at_the_callers_maximum_and_the_reserve_still_applies():
    request = openrtb.BidRequest.model_validate(
        {"id": "r", "imp": [{"id": "1", "bidfloor": 50.0, "banner": {}}], "site": {}}
    )

    def floor(cap: int | None, reserve: int = 10_000) -> int:
        context = openrtb.to_context(
            request, request.imp[0], auction_id="a", at=datetime.now(UTC), reserve_price_micros=reserve,
            publisher_id="pub-news", max_floor_cpm_micros=cap,
        )  # fmt: skip
        assert context.publisher_id == "pub-news"
        return context.floor_cpm_micros

    assert floor(None) == 50_000_000
    assert floor(2_000_000) == 2_000_000
    assert floor(80_000_000) == 50_000_000
    assert floor(2_000_000, reserve=3_000_000) == 3_000_000  # the platform's reserve is not the caller's to lower
