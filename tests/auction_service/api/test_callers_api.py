"""Callers of the auction endpoints are known: API keys, their policy, and revocation, outside local mode.

One started service in prod mode (real Kafka, real SQLite store, the champion) behind two
live servers, the fast path on and off; every test runs against both. The store holds one
CPM campaign bidding USD 10: alone in its auctions, it clears at the floor, so the price
shows which floor the auction ran with.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from adstream.contracts import Topic
from adstream.events import AuctionRecord
from adstream.settings import Environment
from auction_service.api.app import create_app
from auction_service.campaign_store import callers, store
from auction_service.campaign_store.callers import CallerKind, IssuedKey
from auction_service.serving.callers import KEYS_TTL_S
from auction_service.serving.state import ServiceState
from tests.auction_service.conftest import BOTH_WAYS, instruction, live_server, running_service, topic_records

pytestmark = pytest.mark.slow

PUBLISHER_MAX_FLOOR = 2_000_000  # USD 2 CPM
BID_REQUEST: dict[str, Any] = {
    "id": "req-callers",
    "imp": [{"id": "1", "bidfloor": 50.0, "banner": {"w": 300, "h": 250}}],
    "site": {"id": "news"},
}
LOW_FLOOR = {**BID_REQUEST, "imp": [{"id": "1", "bidfloor": 1.0, "banner": {}}]}


@dataclass(frozen=True)
class Service:
    state: ServiceState
    urls: dict[bool, str]  # by fast path on/off
    publisher: IssuedKey  # max floor USD 2 CPM, no first price
    exchange: IssuedKey  # max floor USD 1,000 CPM, first price allowed
    to_revoke: dict[bool, IssuedKey]  # one per way: each app holds its own key cache


def issue(state: ServiceState, caller_id: str, **policy: Any) -> IssuedKey:
    values = {"kind": CallerKind.PUBLISHER, "max_floor_cpm_micros": PUBLISHER_MAX_FLOOR, "first_price_allowed": False}
    values.update(policy)
    with state.sessions() as session:
        return callers.create_key(session, caller_id=caller_id, **values)


@pytest.fixture(scope="module")
def service(service_settings) -> Iterator[Service]:
    prod = service_settings.model_copy(
        update={
            "adstream_env": Environment.PROD,
            "auction_api_token": SecretStr("a-campaign-token-that-is-not-the-default"),
            "event_signing_keys": SecretStr("prod-1:" + "s" * 48),
            "event_signing_key_id": "prod-1",
        }
    )
    campaign = instruction("cpm-10", pricing_model="CPM", bid_micros=10_000_000, frequency_cap_per_day=1000)
    with running_service(prod, campaign) as state:
        publisher = issue(state, "pub-news")
        exchange = issue(
            state, "ssp-one", kind=CallerKind.EXCHANGE, max_floor_cpm_micros=10**9, first_price_allowed=True
        )
        to_revoke = {way: issue(state, f"pub-leaving-{way}") for way in (True, False)}
        apps = {way: create_app(state.settings.model_copy(update={"auction_fast_path": way}), state=state)
                for way in (True, False)}  # fmt: skip
        with live_server(apps[True], fast_path=True) as on, live_server(apps[False], fast_path=False) as off:
            yield Service(state, {True: on, False: off}, publisher, exchange, to_revoke)


@pytest.fixture(**BOTH_WAYS)
def way(request) -> bool:
    return request.param


def post(service: Service, way: bool, path: str, body: dict[str, Any], headers: dict[str, str] | None = None):
    return httpx.post(service.urls[way] + path, json=body, headers=headers or {}, timeout=30)


def key(issued: IssuedKey) -> dict[str, str]:
    return {"X-Api-Key": issued.api_key}


@pytest.mark.parametrize(("path", "body"), [("/v1/auction", {}), ("/openrtb2/auction", BID_REQUEST)])
def test_a_request_without_a_key_outside_local_mode_gets_401_saying_what_to_send(service, way, path, body):
    response = post(service, way, path, body)
    assert response.status_code == 401, response.text
    assert "X-Api-Key: <key_id>.<secret>" in response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"
    # Another scheme than Bearer is no key either.
    assert post(service, way, path, body, {"Authorization": f"Basic {service.publisher.api_key}"}).status_code == 401


@pytest.mark.parametrize(("path", "body"), [("/v1/auction", {}), ("/openrtb2/auction", BID_REQUEST)])
def test_a_wrong_or_unknown_key_gets_401(service, way, path, body):
    key_id, secret = service.publisher.api_key.split(".", 1)
    for presented in (
        f"{key_id}.{secret[::-1]}",  # the right key id, a wrong secret
        f"{service.exchange.key_id}.{secret}",  # another caller's key id
        f"{'0' * 16}.{secret}",
        secret,
        "x",
    ):
        response = post(service, way, path, body, {"X-Api-Key": presented})
        assert response.status_code == 401, presented
        assert "unknown or revoked" in response.json()["detail"]


def test_a_valid_key_is_served_and_its_caller_is_the_auctions_publisher(service, way):
    by_header = post(service, way, "/v1/auction", {}, key(service.publisher))
    by_bearer = post(service, way, "/v1/auction", {}, {"Authorization": f"Bearer {service.publisher.api_key}"})
    for response in (by_header, by_bearer):
        assert response.status_code == 200, response.text
        served = service.state.served_auction(response.json()["auction_id"])
        assert served is not None and served.publisher_id == "pub-news"
    bid = post(service, way, "/openrtb2/auction", LOW_FLOOR, key(service.exchange))
    assert bid.status_code == 200, bid.text
    served = service.state.served_auction(bid.json()["bidid"])
    assert served is not None and served.publisher_id == "ssp-one"

    # Written behind to the store with its publisher, as the event path reads it after a restart.
    service.state.flush_served()
    with service.state.sessions() as session:
        stored = store.served_auction(session, by_header.json()["auction_id"])
    assert stored is not None and stored.publisher_id == "pub-news"


def test_the_auction_record_carries_the_publisher(service, way):
    response = post(service, way, "/v1/auction", {}, key(service.publisher))
    assert response.status_code == 200, response.text
    auction_id = response.json()["auction_id"]
    assert service.state.auction_log is not None
    assert service.state.auction_log.flush(10) == 0
    records = [
        AuctionRecord.model_validate_json(record.value)
        for record in topic_records(service.state.settings, Topic.AUCTIONS)
        if record.key == auction_id.encode()
    ]
    assert [record.publisher_id for record in records] == ["pub-news"]


def test_a_floor_above_the_callers_maximum_is_lowered_to_it(service, way):
    # Uncapped, a USD 50 floor leaves the USD 10 campaign out (no fill); capped at USD 2, it clears at 2.
    response = post(service, way, "/v1/auction", {"floor_cpm": "50"}, key(service.publisher))
    assert response.status_code == 200, response.text
    assert response.json()["clearing_price_micros"] == PUBLISHER_MAX_FLOOR
    # A floor within the maximum is honoured as it is.
    response = post(service, way, "/v1/auction", {"floor_cpm": "1.5"}, key(service.publisher))
    assert response.json()["clearing_price_micros"] == 1_500_000
    # OpenRTB the same: bidfloor 50 becomes 2.
    bid = post(service, way, "/openrtb2/auction", BID_REQUEST, key(service.publisher))
    assert bid.status_code == 200, bid.text
    assert bid.json()["seatbid"][0]["bid"][0]["price"] == 2.0
    # A caller whose maximum is above the floor gets the floor it asked for: no fill at USD 50.
    assert post(service, way, "/openrtb2/auction", BID_REQUEST, key(service.exchange)).status_code == 204
    assert post(service, way, "/v1/auction", {"floor_cpm": "50"}, key(service.exchange)).status_code == 204


def test_first_price_gets_no_bid_unless_the_caller_is_allowed_it(service, way):
    # A valid request we will not buy is a no bid (204), never a 4xx an exchange would count as an error.
    first_price = {**LOW_FLOOR, "at": 1}
    refused = post(service, way, "/openrtb2/auction", first_price, key(service.publisher))
    assert (refused.status_code, refused.content) == (204, b"")
    assert (
        refused.headers["X-No-Bid-Reason"]
        == "at=1 (first price) is not allowed for caller 'pub-news': send at=2 (second price)"
    )
    assert post(service, way, "/openrtb2/auction", {**first_price, "at": 2}, key(service.publisher)).status_code == 200
    allowed = post(service, way, "/openrtb2/auction", first_price, key(service.exchange))
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["seatbid"][0]["bid"][0]["price"] == 10.0  # first price: the bid


def test_a_revoked_key_is_refused_and_a_new_one_admitted_within_the_key_ttl(service, way):
    leaving = service.to_revoke[way]
    assert post(service, way, "/v1/auction", {}, key(leaving)).status_code == 200
    with service.state.sessions() as session:
        assert callers.revoke_key(session, leaving.key_id) is callers.RevokeOutcome.REVOKED
    newcomer = issue(service.state, f"pub-joining-{way}")
    changed = time.monotonic()
    deadline = changed + KEYS_TTL_S + 2  # a reload starts within the TTL and takes milliseconds
    while True:
        revoked = post(service, way, "/v1/auction", {}, key(leaving)).status_code
        joined = post(service, way, "/v1/auction", {}, key(newcomer)).status_code
        if (revoked, joined) == (401, 200):
            break
        assert time.monotonic() < deadline, f"after {KEYS_TTL_S + 2} s: revoked key {revoked}, new key {joined}"
        time.sleep(0.2)


def test_both_ways_refuse_alike(service):
    answers = []
    for way in (True, False):
        response = post(service, way, "/v1/auction", {}, {"X-Api-Key": "x"})
        answers.append((response.status_code, response.headers["www-authenticate"], response.content))
    assert answers[0] == answers[1]
