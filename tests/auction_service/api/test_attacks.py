"""The event API under attack, over real HTTP, with a real broker and store: nothing is charged that should not be.

Each case checks the status the caller gets, what the ledger charged (read from the store, not
from the answers), and for refused events the count in /metrics and the record on
``refused-events``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from adstream.contracts import Topic
from adstream.settings import Environment
from auction_service.api.app import DefaultTokenOutsideLocal, create_app
from auction_service.campaign_store.tables import FeedbackJournal, ServedAuction, SpendLedgerEntry
from tests.auction_service.conftest import (
    BROWSER,
    BROWSER_UA,
    impression_time,
    instruction,
    live_server,
    running_service,
    signed_event,
    topic_records,
)
from tests.conftest import make_settings

pytestmark = pytest.mark.slow
DATACENTER = "203.0.113.0/24"


@pytest.fixture(scope="module")
def service(service_settings):
    settings = service_settings.model_copy(update={"ivt_datacenter_cidrs": DATACENTER})
    cpc = instruction("cpc", bid_micros=900_000, total_budget_micros=10**9, daily_budget_micros=10**9,
                      targeting={"device_types": ["desktop", "mobile"]})  # fmt: skip
    cpa = instruction("cpa", pricing_model="CPA", bid_micros=200_000, targeting={"device_types": ["tablet"]})
    with running_service(settings, cpc, cpa) as state, live_server(create_app(state=state)) as base_url:
        yield state, base_url


@pytest.fixture
def http(service):
    _, base_url = service
    with httpx.Client(base_url=base_url, timeout=30) as client:
        yield client


def serve(http: httpx.Client, device_type: str = "desktop") -> dict:
    response = http.post("/v1/auction", json={"user_id": f"u-{uuid.uuid4().hex[:8]}", "device_type": device_type})
    assert response.status_code == 200, response.text
    return response.json()


def charged_micros(service, auction_id: str) -> int:
    state, _ = service
    with state.sessions() as session:
        return session.scalar(
            select(func.coalesce(func.sum(SpendLedgerEntry.cost_micros), 0)).where(
                SpendLedgerEntry.auction_id == auction_id
            )
        )


def refused_count(http: httpx.Client, reason: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(f'adstream_events_refused_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_anonymous_forged_and_expired_clicks_are_refused_counted_quarantined_and_never_charged(service, http):
    state, _ = service
    auction = serve(http)
    http.post("/v1/events", json=signed_event(auction, "impression", at=impression_time()))
    before = {reason: refused_count(http, reason) for reason in ("token_missing", "signature_invalid", "token_expired")}
    anonymous = {**signed_event(auction, "click", "anon"), "token": None}
    forged = signed_event(auction, "click", "forged", token=auction["event_tokens"]["impression"])
    expired_token = state.signer.sign(auction["auction_id"], "click", auction["campaign_id"], 1_700_000_000)
    expired = signed_event(auction, "click", "expired", token=expired_token)
    answers = [http.post("/v1/events", json=body) for body in (anonymous, forged, expired)]
    assert [a.status_code for a in answers] == [401, 403, 410]
    assert [a.json()["detail"].split(":")[0] for a in answers] == [
        "token_missing",
        "signature_invalid",
        "token_expired",
    ]
    # The tracking URL with its token altered is refused the same way.
    click_url = auction["tracking"]["click"]
    assert http.get(click_url[:-4] + ("AAAA" if not click_url.endswith("AAAA") else "BBBB")).status_code == 403
    assert http.get(click_url.split("?")[0]).status_code == 401
    assert charged_micros(service, auction["auction_id"]) == 0
    after = {reason: refused_count(http, reason) for reason in before}
    assert after["token_missing"] - before["token_missing"] == 2
    assert after["signature_invalid"] - before["signature_invalid"] == 2
    assert after["token_expired"] - before["token_expired"] == 1
    state.auction_log.flush(10)
    refused = [json.loads(r.value) for r in topic_records(state.settings, Topic.REFUSED_EVENTS)]
    mine = {(r["event_id"], r["reason"]) for r in refused if r["auction_id"] == auction["auction_id"]}
    assert {("anon", "token_missing"), ("forged", "signature_invalid"), ("expired", "token_expired")} <= mine


def test_a_click_without_an_impression_and_a_conversion_without_a_click_are_recorded_but_not_charged(service, http):
    cpc = serve(http)
    click = http.post("/v1/events", json=signed_event(cpc, "click")).json()["results"][0]
    assert (click["status"], click["charge_status"], click["charged_micros"]) == ("accepted", "out_of_order", 0)
    cpa = serve(http, device_type="tablet")
    assert cpa["campaign_id"] == "cpa"
    http.post("/v1/events", json=signed_event(cpa, "impression", at=impression_time()))
    conversion = http.post("/v1/events", json=signed_event(cpa, "conversion")).json()["results"][0]
    assert (conversion["charge_status"], conversion["charged_micros"]) == ("out_of_order", 0)
    assert charged_micros(service, cpc["auction_id"]) == charged_micros(service, cpa["auction_id"]) == 0


def test_a_replay_after_30_minutes_is_a_duplicate_charged_and_published_once(service, http):
    state, _ = service
    auction = serve(http)
    http.post("/v1/events", json=signed_event(auction, "impression", at=impression_time()))
    click = signed_event(auction, "click", "clk-replayed")
    first = http.post("/v1/events", json=click).json()["results"][0]
    assert first["charged_micros"] == auction["clearing_price_micros"] > 0
    # Kafka's ack is marked in the journal within a relay round (2 s).
    deadline = time.monotonic() + 20
    while not published_at(state, "clk-replayed"):
        assert time.monotonic() < deadline, "the journal never marked the click published"
        time.sleep(0.2)
    # Thirty minutes pass: the auction and the click are old, and out of the shared store.
    with state.sessions() as session:
        state.flush_served()
        served = session.get(ServedAuction, auction["auction_id"])
        journaled = session.get(FeedbackJournal, "clk-replayed")
        served.served_at -= timedelta(minutes=30)
        journaled.event_time -= timedelta(minutes=30)
        journaled.recorded_at -= timedelta(minutes=30)
        session.commit()
    state.shared.client.delete(state.shared.key("auction", auction["auction_id"]))  # past the shared window
    replay = http.post("/v1/events", json=click).json()["results"][0]
    assert (replay["status"], replay["charged_micros"], replay["charge_status"]) == ("duplicate", 0, "charged")
    assert charged_micros(service, auction["auction_id"]) == auction["clearing_price_micros"]
    published = [json.loads(r.value) for r in topic_records(state.settings, Topic.AD_FEEDBACK)]
    assert [p["event_id"] for p in published].count("clk-replayed") == 1


def test_fifty_concurrent_identical_clicks_and_fifty_clicks_on_one_impression_charge_once(service):
    _, base_url = service

    async def attack() -> tuple[dict, list[dict], list[dict]]:
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
            auction = (await client.post("/v1/auction", json={"user_id": "u-many", "device_type": "desktop"})).json()
            await client.post("/v1/events", json=signed_event(auction, "impression", at=impression_time()))
            same = signed_event(auction, "click", "clk-same")
            identical = await asyncio.gather(*(client.post("/v1/events", json=same) for _ in range(50)))
            other = serve_async_body(auction)
            distinct = await asyncio.gather(*(client.post("/v1/events", json=body) for body in other))
            return auction, [r.json()["results"][0] for r in identical], [r.json()["results"][0] for r in distinct]

    auction, identical, distinct = asyncio.run(attack())
    price = auction["clearing_price_micros"]
    assert sorted(r["status"] for r in identical) == ["accepted"] + ["duplicate"] * 49
    assert sum(r["charged_micros"] for r in identical) == price
    assert all(r["charged_micros"] == 0 for r in distinct)
    assert {(r["charge_status"], r["ivt_reason"]) for r in distinct} == {("invalid_traffic", "duplicate_click")}
    assert charged_micros(service, auction["auction_id"]) == price


def published_at(state, event_id: str) -> datetime | None:
    with state.sessions() as session:
        return session.scalar(select(FeedbackJournal.published_at).where(FeedbackJournal.event_id == event_id))


def serve_async_body(auction: dict) -> list[dict]:
    return [signed_event(auction, "click", f"clk-other-{n}") for n in range(50)]


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"User-Agent": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"}, "known_bot_ua"),
        ({"User-Agent": "Java/17.0.2"}, "non_browser_ua"),
        ({**BROWSER, "X-Forwarded-For": "203.0.113.7"}, "datacenter_ip"),
    ],
    ids=["crawler", "non-browser", "data-center"],
)
def test_a_flood_of_clicks_from_one_agent_or_address_is_invalid_traffic_never_charged(service, http, headers, reason):
    auctions = [serve(http) for _ in range(20)]
    outcomes = []
    for auction in auctions:
        for event_type, at in (("impression", impression_time()), ("click", None)):
            body = {k: v for k, v in signed_event(auction, event_type, at=at).items() if k != "user_agent"}
            answer = http.get(auction["tracking"][event_type], headers=headers) if at is None else None
            if answer is None:
                answer = http.post("/v1/events", json=body, headers=headers)
                assert answer.status_code == 202, answer.text
            else:
                assert answer.status_code == 204, answer.text
    for auction in auctions:
        assert charged_micros(service, auction["auction_id"]) == 0
    state, _ = service
    with state.sessions() as session:
        rows = session.execute(
            select(FeedbackJournal.ivt_category, FeedbackJournal.payload).where(
                FeedbackJournal.auction_id.in_([a["auction_id"] for a in auctions])
            )
        ).all()
    outcomes = [(row.ivt_category, json.loads(row.payload)["ivt_reason"]) for row in rows]
    assert outcomes == [("givt", reason)] * 40


def test_the_same_clicks_from_a_browser_are_charged(service, http):
    """The control of the flood test: a browser agent and an ordinary address are charged."""
    auction = serve(http)
    http.post("/v1/events", json=signed_event(auction, "impression", at=impression_time()), headers=BROWSER)
    answer = http.get(auction["tracking"]["click"], headers={"User-Agent": BROWSER_UA, "X-Forwarded-For": "192.0.2.9"})
    assert answer.status_code == 204
    assert charged_micros(service, auction["auction_id"]) == auction["clearing_price_micros"] > 0


def test_refused_events_at_the_edge_of_their_window(service, http):
    auction = serve(http)
    late = signed_event(auction, "impression", at=datetime.now(UTC) - timedelta(hours=2))
    answer = http.post("/v1/events", json=late)
    assert answer.status_code == 422 and answer.json()["detail"].startswith("event_time_too_old")
    assert http.post("/v1/events", json=signed_event({**auction, "auction_id": "nope"}, "click")).status_code == 404


def test_the_service_refuses_to_start_outside_local_mode_with_the_default_signing_key(tmp_path):
    production = make_settings(tmp_path, adstream_env=Environment.PROD, auction_api_token=SecretStr("t" * 40))
    with pytest.raises(DefaultTokenOutsideLocal, match="EVENT_SIGNING_KEYS has the local default"):
        create_app(settings=production)
    keys = SecretStr("2026-12:" + "s" * 48)
    create_app(settings=production.model_copy(update={"event_signing_keys": keys, "event_signing_key_id": "2026-12"}))
