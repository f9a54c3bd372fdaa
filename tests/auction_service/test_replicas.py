"""Auction replicas as real processes on one port, one shared store (redis-server), one campaign store, a broker.

- 3 replicas (``adstream serve`` with AUCTION_REPLICAS=3), 64 concurrent connections, a CPM, a CPC and a
  CPA campaign with small budgets and a 1-per-day frequency cap; one replica is killed with -9 midway
  and started again by the supervisor. Budgets, caps and charges must hold exactly.
- An event posted to another replica right after its auction is accepted.
- The pacing leader killed with -9: another replica takes the lease and its controllers continue from the
  states in the shared store.
- The shared store down: 503 with Retry-After, nothing charged; back, serving resumes by itself.
- OpenRTB through the fleet, one replica killed with -9: two imps per request, win and billing notices fired
  at another replica (twice), CPM budgets and a 1-per-day cap held, each impression charged once.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from adstream.settings import Settings
from auction_service.api.app import create_app
from auction_service.campaign_store import store
from auction_service.campaign_store.db import make_engine, make_session_factory, migrate
from auction_service.campaign_store.tables import SpendLedgerEntry
from devstack import services
from tests.auction_service.conftest import BROWSER_UA, instruction, running_service, signed_event
from tests.conftest import free_port, shared_namespace

pytestmark = pytest.mark.slow

BUDGETS = {
    "rep-cpm": ("CPM", 2_000_000, 60_000),
    "rep-cpc": ("CPC", 400_000, 1_500_000),
    "rep-cpa": ("CPA", 900_000, 2_000_000),
}
BILLABLE = {"CPM": "impression", "CPC": "click", "CPA": "conversion"}
USERS = [f"rep-u{i}" for i in range(120)]
CONNECTIONS = 64
CONTEXT = {"device_type": "desktop", "country": "Norway"}
# OpenRTB campaigns buy phones only, so the /v1/auction tests above (desktops) never see them. A USD 2 CPM bid
# costs 2,000 micros an impression: each budget is 15 impressions.
RTB_BUDGETS = {"rtb-a": 30_000, "rtb-b": 30_000, "rtb-c": 30_000}
RTB_USERS = [f"rtb-u{i}" for i in range(40)]
RTB_DEVICE = {"devicetype": 4, "ua": BROWSER_UA, "ip": "73.12.0.9", "geo": {"country": "NOR"}}


def seeded(settings: Settings) -> None:
    engine = make_engine(settings)
    migrate(settings, engine)
    with make_session_factory(engine)() as session:
        for campaign_id, (pricing, bid, budget) in BUDGETS.items():
            store.apply_instruction(
                session,
                instruction(
                    campaign_id, pricing_model=pricing, bid_micros=bid, total_budget_micros=budget,
                    daily_budget_micros=budget, frequency_cap_per_day=1, pacing_mode="asap",
                    targeting={"device_types": ["desktop"], "countries": ["Norway"]},
                ),
            )  # fmt: skip
        for campaign_id, budget in RTB_BUDGETS.items():
            store.apply_instruction(
                session,
                instruction(
                    campaign_id, pricing_model="CPM", bid_micros=2_000_000, total_budget_micros=budget,
                    daily_budget_micros=budget, frequency_cap_per_day=1, pacing_mode="asap",
                    targeting={"device_types": ["mobile"]},
                ),
            )  # fmt: skip
    engine.dispose()


PACING_UPDATE_S = 1  # the controllers' interval here: the leader's lease is 3 of them


def fleet_settings(service_settings: Settings, workdir: Path, **update: object) -> Settings:
    """A fleet's own campaign store, local state, port and shared-store namespace in ``workdir``."""
    own = {
        "campaign_db_url": f"sqlite:///{workdir / 'campaigns.db'}", "local_dir": workdir / "local",
        "auction_port": free_port(), "shared_store_namespace": shared_namespace(),
    }  # fmt: skip
    return service_settings.model_copy(update=own | update)


def replica_env(settings: Settings, replicas: int) -> dict[str, str]:
    return {
        **os.environ, **services.settings_env(settings), "AUCTION_REPLICAS": str(replicas),
        "PACING_UPDATE_S": str(PACING_UPDATE_S),
    }  # fmt: skip


def wait_listening(url: str, supervisor: subprocess.Popen, replicas: int, limit_s: float = 180) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        assert supervisor.poll() is None, "the replicas' supervisor exited"
        assert time.monotonic() < deadline, "the replicas did not all start"
        children = psutil.Process(supervisor.pid).children()
        try:
            ready = httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            ready = False
        if ready and len(children) == replicas and all(c.connections(kind="tcp") for c in children):
            return
        time.sleep(0.5)


@pytest.fixture(scope="module")
def fleet(service_settings, tmp_path_factory):
    """3 replicas on one port (their supervisor), and one more replica on a port of its own."""
    workdir = tmp_path_factory.mktemp("replicas")
    settings = fleet_settings(service_settings, workdir)
    seeded(settings)
    logs = open(workdir / "replicas.log", "wb")  # noqa: SIM115 - closed below
    fleet_process = subprocess.Popen(
        [".venv/bin/adstream", "serve"], env=replica_env(settings, 3), stdout=logs, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    single = settings.model_copy(update={"auction_port": free_port()})
    single_process = subprocess.Popen(
        [".venv/bin/adstream", "serve"], env=replica_env(single, 1), stdout=logs, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url, other = f"http://127.0.0.1:{settings.auction_port}", f"http://127.0.0.1:{single.auction_port}"
    try:
        wait_listening(url, fleet_process, 3)
        wait_listening(other, single_process, 0)
        yield settings, url, other, fleet_process
    finally:
        for process in (fleet_process, single_process):
            os.killpg(process.pid, signal.SIGTERM)
        for process in (fleet_process, single_process):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        logs.close()


async def post_until_answered(client: httpx.AsyncClient, path: str, body: dict) -> httpx.Response:
    """A client's retries: a replica killed mid-request drops its connections, so the same body goes again."""
    for _ in range(50):
        try:
            response = await client.post(path, json=body)
        except httpx.TransportError:
            await asyncio.sleep(0.1)
            continue
        if response.status_code != 503:
            return response
        await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
    raise AssertionError(f"{path} was never answered")


async def drive(url: str, seconds: float, kill) -> tuple[list[dict], list[dict]]:
    served: list[dict] = []
    results: list[dict] = []
    deadline = time.monotonic() + seconds
    rng = random.Random(5)
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    headers = {"User-Agent": BROWSER_UA}

    async def one(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            user = rng.choice(USERS)
            response = await post_until_answered(client, "/v1/auction", {"user_id": user, **CONTEXT})
            if response.status_code != 200:
                continue
            auction = response.json()
            served.append({"user": user, **auction})
            shown = datetime.now(UTC) - timedelta(seconds=3)
            chain = [("impression", shown), ("click", shown + timedelta(seconds=1)), ("conversion", None)]
            for event_type, at in chain[: ["CPM", "CPC", "CPA"].index(auction["pricing_model"]) + 1]:
                body = signed_event(auction, event_type, at=at)
                answered = await post_until_answered(client, "/v1/events", body)
                results.append({"event_type": event_type, "auction": auction, **answered.json()["results"][0]})

    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits, headers=headers) as client:
        workers = [asyncio.create_task(one(client)) for _ in range(CONNECTIONS)]
        await asyncio.sleep(seconds / 3)
        kill()
        await asyncio.gather(*workers)
    return served, results


def test_three_replicas_and_a_kill_9_keep_budgets_caps_and_charges_exact(fleet):
    settings, url, _, supervisor = fleet
    victims: list[int] = []

    def kill() -> None:
        victim = psutil.Process(supervisor.pid).children()[1]
        victims.append(victim.pid)
        victim.send_signal(signal.SIGKILL)

    served, results = asyncio.run(drive(url, 12.0, kill))
    wait_listening(url, supervisor, 3)  # the supervisor started it again
    assert victims and victims[0] not in [child.pid for child in psutil.Process(supervisor.pid).children()]

    engine = make_engine(settings)
    sessions = make_session_factory(engine)
    with sessions() as session:
        ledger = session.execute(
            select(SpendLedgerEntry.event_id, SpendLedgerEntry.auction_id, SpendLedgerEntry.campaign_id,
                   SpendLedgerEntry.cost_micros)
        ).all()  # fmt: skip
        campaigns = {cid: store.get_campaign(session, cid) for cid in BUDGETS}
    engine.dispose()
    # Every campaign served, and stopped at its budget: none spent past it.
    by_campaign = Counter(a["campaign_id"] for a in served)
    assert set(by_campaign) == set(BUDGETS), by_campaign
    for campaign_id, (_, _, budget) in BUDGETS.items():
        assert 0 < campaigns[campaign_id].spent_micros <= budget
        assert campaigns[campaign_id].spent_micros == sum(r.cost_micros for r in ledger if r.campaign_id == campaign_id)
    # A 1-per-day cap: no user was served a campaign twice, whichever replica served it.
    seen = Counter((a["user"], a["campaign_id"]) for a in served)
    assert max(seen.values()) == 1, seen.most_common(3)
    # Every accepted billable event is charged exactly once; no other event is.
    billable = [r for r in results if r["event_type"] == BILLABLE[r["auction"]["pricing_model"]]]
    assert billable and all(r["status"] in ("accepted", "duplicate") for r in results)
    assert {r["charge_status"] for r in billable} <= {"charged", "over_budget"}
    charged_ids = {r["event_id"] for r in results if r["charge_status"] == "charged"}
    assert charged_ids == {row.event_id for row in ledger}
    assert charged_ids <= {r["event_id"] for r in billable}
    assert len({row.auction_id for row in ledger}) == len(ledger)  # one charge per auction
    # Every reservation was charged or freed: nothing is held, and the shared spend is the ledger's.
    shared = redis.Redis.from_url(settings.shared_store_url)
    ns = settings.shared_store_namespace
    assert shared.hlen(f"{ns}:res") == 0
    assert all(int(v) == 0 for v in shared.hvals(f"{ns}:held"))
    spent = {k.decode(): int(v) for k, v in shared.hgetall(f"{ns}:spent").items() if k.decode() in BUDGETS}
    assert spent == {cid: view.spent_micros for cid, view in campaigns.items() if view.spent_micros}


def test_an_event_for_another_replicas_auction_is_accepted_at_once(fleet):
    _, url, other, _ = fleet
    auction = httpx.post(f"{url}/v1/auction", json={"user_id": "rep-cross", **CONTEXT}, timeout=10)
    assert auction.status_code == 200, auction.text
    body = signed_event(auction.json(), "impression", at=datetime.now(UTC))
    answered = httpx.post(f"{other}/v1/events", json=body, headers={"User-Agent": BROWSER_UA}, timeout=10)
    assert answered.status_code == 202, answered.text
    assert answered.json()["results"][0]["status"] == "accepted"


async def get_until_answered(client: httpx.AsyncClient, url: str) -> httpx.Response:
    """An exchange's notice, fired again when the replica it reached was killed."""
    for _ in range(50):
        try:
            response = await client.get(url)
        except httpx.TransportError:
            await asyncio.sleep(0.1)
            continue
        if response.status_code != 503:
            return response
        await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
    raise AssertionError(f"{url} was never answered")


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def drive_openrtb(url: str, other: str, seconds: float, kill) -> tuple[list[dict], list[tuple[str, int]]]:
    """Bid requests of two imps each on the fleet; each bid's win notice and its billing notice (twice: on the
    single replica at once, then on the fleet) fired as an exchange does, from its own servers."""
    bids: list[dict] = []
    notices: list[tuple[str, int]] = []
    deadline = time.monotonic() + seconds
    rng = random.Random(9)
    imps = [{"id": "1", "banner": {"w": 300, "h": 250}}, {"id": "2", "banner": {"w": 320, "h": 50}}]
    exchange = {"User-Agent": "Go-http-client/1.1"}

    async def one(fleet: httpx.AsyncClient, single: httpx.AsyncClient, worker: int) -> None:
        number = 0
        while time.monotonic() < deadline:
            number += 1
            user = rng.choice(RTB_USERS)
            request = {"id": f"r{worker}-{number}", "imp": imps, "site": {"domain": "news.example"},
                       "device": RTB_DEVICE, "user": {"id": user}}  # fmt: skip
            response = await post_until_answered(fleet, "/openrtb2/auction", request)
            if response.status_code != 200:
                continue
            placed = [bid for seat in response.json()["seatbid"] for bid in seat["bid"]]
            bids.extend({"user": user, "request": request["id"], **bid} for bid in placed)
            for bid in placed:
                price = f"{bid['price'] * 0.8:.6f}"  # a second-price exchange's price, under our bid
                win = await get_until_answered(single, _path(bid["nurl"]).replace("${AUCTION_PRICE}", price))
                notices.append((f"{bid['id']}:win", win.status_code))
                for client in (single, fleet):
                    billed = await get_until_answered(client, _path(bid["burl"]))
                    notices.append((bid["id"], billed.status_code))

    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with (
        httpx.AsyncClient(base_url=url, timeout=30, limits=limits, headers=exchange) as fleet,
        httpx.AsyncClient(base_url=other, timeout=30, limits=limits, headers=exchange) as single,
    ):
        workers = [asyncio.create_task(one(fleet, single, worker)) for worker in range(CONNECTIONS // 2)]
        await asyncio.sleep(seconds / 3)
        kill()
        await asyncio.gather(*workers)
    return bids, notices


def test_openrtb_through_the_fleet_and_a_kill_9_keeps_caps_budgets_and_one_charge_per_impression(fleet):
    # Before the pacing leader's kill below, which may take the single replica down for good.
    settings, url, other, supervisor = fleet
    victims: list[int] = []

    def kill() -> None:
        victim = psutil.Process(supervisor.pid).children()[0]
        victims.append(victim.pid)
        victim.send_signal(signal.SIGKILL)

    bids, notices = asyncio.run(drive_openrtb(url, other, 10.0, kill))
    wait_listening(url, supervisor, 3)
    assert victims

    # Every notice was taken (a replay of the billing notice too: 204, charged once), on whichever replica.
    assert bids and {status for _, status in notices} == {204}, Counter(status for _, status in notices)
    # One campaign fills at most one imp of a request, and the 1-per-day cap holds across the replicas.
    per_request = Counter((bid["request"], bid["cid"]) for bid in bids)
    assert max(per_request.values()) == 1
    per_user = Counter((bid["user"], bid["cid"]) for bid in bids)
    assert max(per_user.values()) == 1, per_user.most_common(3)
    assert {bid["cid"] for bid in bids} == set(RTB_BUDGETS)

    engine = make_engine(settings)
    with make_session_factory(engine)() as session:
        ledger = session.execute(
            select(SpendLedgerEntry.auction_id, SpendLedgerEntry.campaign_id, SpendLedgerEntry.event_type,
                   SpendLedgerEntry.cost_micros).where(SpendLedgerEntry.campaign_id.in_(list(RTB_BUDGETS)))
        ).all()  # fmt: skip
        campaigns = {cid: store.get_campaign(session, cid) for cid in RTB_BUDGETS}
    engine.dispose()
    # Only impressions are charged (a win notice is our media cost, never the advertiser's), each auction once,
    # at the bid's price per thousand, and no campaign past its budget.
    assert ledger and {row.event_type for row in ledger} == {"impression"}
    assert len({row.auction_id for row in ledger}) == len(ledger)
    assert {row.auction_id for row in ledger} <= {bid["id"] for bid in bids}
    price = {bid["id"]: round(bid["price"] * 1_000_000) for bid in bids}  # the GSP price: the bid at most
    assert all(row.cost_micros == -(-price[row.auction_id] // 1000) <= 2_000 for row in ledger)
    for campaign_id, budget in RTB_BUDGETS.items():
        charged = sum(row.cost_micros for row in ledger if row.campaign_id == campaign_id)
        assert campaigns[campaign_id].spent_micros == charged <= budget
    # Every bid's reservation was charged or freed by its billing notice: none is still held.
    shared = redis.Redis.from_url(settings.shared_store_url)
    held = shared.hmget(f"{settings.shared_store_namespace}:res", [bid["id"] for bid in bids])
    assert held == [None] * len(bids)


def _pacing_state(shared: redis.Redis, key: str, campaign_id: str) -> dict[str, str] | None:
    value = shared.hget(key, campaign_id)
    return None if value is None else dict(part.split("=", 1) for part in value.decode().split(" "))


def test_a_kill_9_of_the_pacing_leader_hands_its_controllers_to_another_replica_that_continues(fleet):
    settings, _, _, supervisor = fleet
    shared = redis.Redis.from_url(settings.shared_store_url)
    leader_key, state_key = (
        f"{settings.shared_store_namespace}:pacing:leader",
        f"{settings.shared_store_namespace}:pacing:state",
    )
    deadline = time.monotonic() + 30
    while (leader := shared.get(leader_key)) is None or _pacing_state(shared, state_key, "rep-cpm") is None:
        assert time.monotonic() < deadline, "no replica took the pacing lease"
        time.sleep(0.2)
    leader_pid = int(leader.decode().split("-", 1)[0])
    replicas = [p.pid for p in psutil.Process(supervisor.pid).children()]
    assert psutil.pid_exists(leader_pid)  # a replica of the fleet, or the one on a port of its own
    os.kill(leader_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    before = _pacing_state(shared, state_key, "rep-cpm")  # the dead leader's last update
    deadline = time.monotonic() + 30
    while True:
        after = _pacing_state(shared, state_key, "rep-cpm")
        if after["updated_at_us"] != before["updated_at_us"]:
            break
        assert time.monotonic() < deadline, "nobody updated the controllers after the leader's kill"
        time.sleep(0.05)
    took_over_s = time.monotonic() - killed_at
    new_leader = shared.get(leader_key)
    assert new_leader is not None and new_leader != leader
    if leader_pid in replicas:  # the supervisor starts a killed replica again
        wait_listening(f"http://127.0.0.1:{settings.auction_port}", supervisor, 3)
    # Within the lease (3 intervals) and the next housekeeping pass, on a noisy machine.
    assert took_over_s < 3 * PACING_UPDATE_S + 5
    # It stepped from the state in the store: its interval starts at the dead leader's last update (a fresh
    # controller would have measured it from the day's start).
    assert int(after["interval_us"]) == int(after["updated_at_us"]) - int(before["updated_at_us"])
    assert int(after["interval_us"]) < 10 * 1_000_000


def test_the_shared_store_down_is_a_503_charging_nothing_and_serving_resumes_when_it_is_back(service_settings):
    own = service_settings.model_copy(update={"shared_store_port": free_port(), "shared_store_url": ""})
    own = Settings(**{**own.model_dump(), "shared_store_url": ""})
    (server,) = services.build_services(own, ["shared-store"])
    services.start(own, server)
    services.wait_healthy(own, server)
    try:
        with (
            running_service(own, instruction("down-cpm", pricing_model="CPM", bid_micros=2_000_000)) as state,
            TestClient(create_app(state=state), headers={"User-Agent": BROWSER_UA}) as client,
        ):
            first = client.post("/v1/auction", json={"user_id": "down-1", "device_type": "desktop"})
            assert first.status_code == 200, first.text
            services.stop(own, server)
            refused = client.post("/v1/auction", json={"user_id": "down-2", "device_type": "desktop"})
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            assert "shared store" in refused.json()["detail"]
            impression = signed_event(first.json(), "impression", at=datetime.now(UTC))
            event = client.post("/v1/events", json=impression)
            assert event.status_code == 503 and "nothing was served or charged" in event.json()["detail"]
            with state.sessions() as session:
                assert store.get_campaign(session, "down-cpm").spent_micros == 0
            services.start(own, server)  # its data is on disk (appendonly): nothing was lost
            services.wait_healthy(own, server)
            again = client.post("/v1/auction", json={"user_id": "down-3", "device_type": "desktop"})
            assert again.status_code == 200, again.text
            event = client.post("/v1/events", json=impression)
            assert event.status_code == 202 and event.json()["results"][0]["charge_status"] == "charged"
            impression_cost = -(-first.json()["clearing_price_micros"] // 1000)  # a thousandth, rounded up
            with state.sessions() as session:
                assert store.get_campaign(session, "down-cpm").spent_micros == impression_cost
    finally:
        services.stop(own, server)
