"""The hot routes answer the same with the fast path on and off, and as the app's OpenAPI schema says.

One service state behind two servers: the app with AUCTION_FAST_PATH on (direct routes, the
coalescing protocol) and the app with it off (FastAPI's router, uvicorn's own protocol). The
same requests go to both; every answer must be one the OpenAPI schema documents (status and
body), and the two must be the same bytes once the random auction ids and the ports are
replaced by placeholders.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from jsonschema import Draft202012Validator

from adstream.settings import Settings
from auction_service.api.app import create_app
from auction_service.serving.state import ServiceState
from tests.auction_service.conftest import impression_time, instruction, live_server, running_service, signed_event
from tests.conftest import make_settings

pytestmark = pytest.mark.slow

# Shaped like the IAB's OpenRTB 2.6 examples (a banner on a site), trimmed to what the subset reads.
BID_REQUEST: dict[str, Any] = {
    "id": "80ce30c53c16e6ede735f123ef6e32361bfc7b22",
    "imp": [{"id": "1", "bidfloor": 0.5, "bidfloorcur": "USD", "banner": {"w": 300, "h": 250}}],
    "site": {"id": "102855", "domain": "www.foobar.com"},
    "device": {"devicetype": 4, "geo": {"country": "USA"}},
    "user": {"id": "u-equivalence", "yob": 1985, "gender": "F"},
}


FUTURE = datetime(2100, 1, 1, tzinfo=UTC)  # an event_time the service refuses (422)


@dataclass(frozen=True)
class Answer:
    path: str
    status: int
    content_type: str | None
    headers: tuple[tuple[str, str], ...]  # but the date, and the length (the body's, compared itself)
    body: bytes


def with_fast_path(settings: Settings, on: bool) -> Settings:
    return settings.model_copy(update={"auction_fast_path": on})


@pytest.fixture(scope="module")
def servers(service_settings) -> Iterator[tuple[ServiceState, dict[bool, str]]]:
    """One started service state, and the base URLs of its two servers by fast path on/off."""
    campaigns = (instruction("same-cpc"), instruction("same-cpm", pricing_model="CPM", bid_micros=2_000_000))
    with running_service(service_settings, *campaigns) as state:
        on, off = (create_app(with_fast_path(state.settings, way), state=state) for way in (True, False))
        with live_server(on, fast_path=True) as on_url, live_server(off, fast_path=False) as off_url:
            yield state, {True: on_url, False: off_url}


def exchange(base_url: str) -> tuple[list[Answer], list[str]]:
    """Every kind of answer of the three hot routes: filled, no fill, invalid, a batch, one event, refused ones."""
    answers: list[Answer] = []

    def post(path: str, body: Any = None, *, content: bytes | None = None) -> httpx.Response:
        if content is None:
            response = httpx.post(base_url + path, json=body, timeout=30)
        else:
            headers = {"content-type": "application/json"}
            response = httpx.post(base_url + path, content=content, headers=headers, timeout=30)
        kept = tuple(sorted((k, v) for k, v in response.headers.items() if k not in ("date", "content-length")))
        answers.append(Answer(path, response.status_code, response.headers.get("content-type"), kept, response.content))
        return response

    filled = post("/v1/auction", {"device_type": "mobile", "country": "France"}).json()
    post("/v1/auction", {"device_type": "ctv", "blocked_categories": ["Automotive"]})  # every campaign blocked
    post("/v1/auction", content=b'{"age": -3}')
    bid = post("/openrtb2/auction", BID_REQUEST).json()
    post("/openrtb2/auction", {**copy.deepcopy(BID_REQUEST), "bcat": ["IAB2"]})  # Automotive blocked
    post("/openrtb2/auction", content=b'{"id": "x", "imp": []}')
    auction_id, bid_id = filled["auction_id"], bid["bidid"]

    click = signed_event(filled, "click")
    never_served = {**click, "event_id": f"{auction_id}-lost", "auction_id": "never-served"}
    impression = signed_event(filled, "impression", at=impression_time())
    post("/v1/events", {"events": [impression, click, click, never_served]})
    (billed_token,) = parse_qs(urlsplit(bid["seatbid"][0]["bid"][0]["burl"]).query)["t"]  # the billing notice's
    bid_auction = {"auction_id": bid_id, "event_tokens": {"impression": billed_token}}
    # Relayed as the burl states its device (none here): a billing token covers exactly that (serving.tracking).
    post("/v1/events", {**signed_event(bid_auction, "impression", user_agent=None), "billing_notice": True})
    post("/v1/events", never_served)  # one refused event: 404
    post("/v1/events", signed_event(filled, "click", f"{auction_id}-future", at=FUTURE))  # its time: 422
    post("/v1/events", {**signed_event(bid_auction, "impression", f"{bid_id}-unsigned"), "token": None})  # 401
    post("/v1/events", {"events": []})
    return answers, [auction_id, bid_id]


# An event token (``adstream.signing``) and the events' deadline: both follow the auction's own time.
TOKEN_PATTERN = re.compile(rb"[A-Za-z0-9_-]+\.[0-9]+\.[0-9a-f]{32}")
EXPIRES_PATTERN = re.compile(rb'"expires_at":"[^"]+"')


def normalized(answers: list[Answer], auction_ids: list[str], base_url: str) -> list[Answer]:
    """The answers with the auction ids, their tokens and deadline and the server's own URL replaced by placeholders."""
    replaced = []
    for answer in answers:
        body = answer.body.replace(base_url.encode(), b"<server>")
        body = EXPIRES_PATTERN.sub(b'"expires_at":"<expires>"', TOKEN_PATTERN.sub(b"<token>", body))
        for number, auction_id in enumerate(auction_ids):
            body = body.replace(auction_id.encode(), f"<auction-{number}>".encode())
        replaced.append(Answer(answer.path, answer.status, answer.content_type, answer.headers, body))
    return replaced


def check_against_openapi(openapi: dict[str, Any], answer: Answer) -> None:
    documented = openapi["paths"][answer.path]["post"]["responses"]
    assert str(answer.status) in documented, f"{answer.path} answered {answer.status}, not in {sorted(documented)}"
    content = documented[str(answer.status)].get("content")
    if content is None:
        assert answer.body == b"", answer
        return
    assert answer.content_type == "application/json", answer
    # The schema's $refs point into components: validate with them in the same document.
    schema = {**content["application/json"]["schema"], "components": openapi["components"]}
    Draft202012Validator(schema).validate(json.loads(answer.body))


def test_the_hot_routes_answer_the_same_both_ways_and_as_documented(servers):
    state, urls = servers
    openapi = create_app(state=state).openapi()
    seen: dict[bool, list[Answer]] = {}
    for way in (True, False):
        answers, auction_ids = exchange(urls[way])
        for answer in answers:
            check_against_openapi(openapi, answer)
        seen[way] = normalized(answers, auction_ids, urls[way])
    statuses = {(answer.path, answer.status) for answer in seen[True]}
    assert statuses == {
        ("/v1/auction", 200), ("/v1/auction", 204), ("/v1/auction", 422),
        ("/openrtb2/auction", 200), ("/openrtb2/auction", 204), ("/openrtb2/auction", 400),
        ("/v1/events", 202), ("/v1/events", 401), ("/v1/events", 404), ("/v1/events", 422),
    }  # fmt: skip
    for on, off in zip(seen[True], seen[False], strict=True):
        assert on == off


def test_the_openapi_schema_is_the_same_both_ways(tmp_path):
    on, off = (create_app(make_settings(tmp_path, auction_fast_path=way)).openapi() for way in (True, False))
    assert on == off
