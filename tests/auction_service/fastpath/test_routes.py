"""DirectRoutes: the hot POST routes served past the router; everything unusual replayed to the app."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from adstream.settings import Settings
from auction_service.api.app import create_app, direct_routes
from auction_service.fastpath.routes import DirectRoute, DirectRoutes


class Bid(BaseModel):
    model_config = ConfigDict(extra="forbid")
    campaign_id: str
    bid_micros: int


class BigBid(Bid):
    """Stricter than the route's own body: what fails here but passes there shows the replay."""

    bid_micros: int = Field(gt=10)


class Placed(BaseModel):
    campaign_id: str
    doubled: int


async def place(body: Bid, request: Request) -> Placed:
    if body.campaign_id == "paused":
        raise HTTPException(409, "campaign paused: resume it first", headers={"Retry-After": "3"})
    if body.campaign_id == "broken":
        raise LookupError("no such ledger")
    return Placed(campaign_id=body.campaign_id, doubled=2 * body.bid_micros)


def _app(direct_body: type[BaseModel] = Bid) -> tuple[FastAPI, list[bytes]]:
    """A FastAPI app whose own route answers 'router' (so a response says which path served it)."""
    app = FastAPI()
    reached_router: list[bytes] = []

    @app.post("/bids", status_code=201)
    async def bids(body: Bid, request: Request) -> dict:
        reached_router.append(await request.body())
        return {"served_by": "router", "campaign_id": body.campaign_id}

    @app.exception_handler(LookupError)
    def lookup_failed(request: Request, exc: LookupError) -> JSONResponse:  # a sync handler, as Starlette allows
        return JSONResponse({"detail": f"lookup failed: {exc}"}, status_code=404)

    routes = {"/bids": DirectRoute(TypeAdapter(direct_body), place, 201)}
    app.add_middleware(DirectRoutes, routes=routes, exception_handlers=app.exception_handlers)
    return app, reached_router


def test_a_valid_json_body_is_served_directly_with_the_routes_status():
    app, reached_router = _app()
    response = TestClient(app).post("/bids", json={"campaign_id": "cmp-1", "bid_micros": 21})
    assert (response.status_code, response.json()) == (201, {"campaign_id": "cmp-1", "doubled": 42})
    assert response.headers["content-type"] == "application/json"
    assert reached_router == []


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b'{"campaign_id": "cmp-1", "bid_micros": "many"}', {"content-type": "application/json"}, 422),
        (b'{"campaign_id": "cmp-1", "bid_micros": 1, "extra": 1}', {"content-type": "application/json"}, 422),
        (b'{"campaign_id": "cmp-1",', {"content-type": "application/json"}, 422),
        (b"", {"content-type": "application/json"}, 422),
        (b'{"campaign_id": "cmp-1", "bid_micros": 1}', {"content-type": "text/plain"}, 422),
    ],
    ids=["invalid-field", "extra-field", "broken-json", "empty", "not-json-content-type"],
)
def test_anything_unusual_gets_fastapis_own_answer(content, headers, status):
    app, reached_router = _app()
    response = TestClient(app).post("/bids", content=content, headers=headers)
    assert response.status_code == status
    assert isinstance(response.json()["detail"], list)  # FastAPI's validation error list, not ours
    assert reached_router in ([], [content])  # a body that reaches the route arrives whole


def test_a_json_content_type_with_parameters_is_direct_and_another_path_is_the_routers():
    app, reached_router = _app()
    client = TestClient(app)
    body = b'{"campaign_id": "cmp-2", "bid_micros": 5}'
    direct = client.post("/bids", content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert direct.json() == {"campaign_id": "cmp-2", "doubled": 10}
    routed = client.post("/bids/", content=body, headers={"content-type": "application/json"}, follow_redirects=False)
    assert (routed.status_code, routed.headers["location"]) == (307, "http://testserver/bids")  # the router's
    assert reached_router == []


def test_endpoint_errors_go_through_the_apps_exception_handlers():
    app, _ = _app()
    client = TestClient(app, raise_server_exceptions=False)
    paused = client.post("/bids", json={"campaign_id": "paused", "bid_micros": 1})
    assert (paused.status_code, paused.json()) == (409, {"detail": "campaign paused: resume it first"})
    assert paused.headers["retry-after"] == "3"
    broken = client.post("/bids", json={"campaign_id": "broken", "bid_micros": 1})
    assert (broken.status_code, broken.json()) == (404, {"detail": "lookup failed: no such ledger"})


def test_a_chunked_body_is_joined_and_a_failing_one_replayed_whole():
    app, reached_router = _app()
    served = asyncio.run(_call(app, [b'{"campaign_id": "cmp-3", ', b'"bid_micros": 4}']))
    assert served[0]["status"] == 201 and served[1]["body"] == b'{"campaign_id":"cmp-3","doubled":8}'
    assert reached_router == []
    app, reached_router = _app(direct_body=BigBid)
    replayed = asyncio.run(_call(app, [b'{"campaign_id": "cmp-3", ', b'"bid_micros": 4}']))
    assert replayed[0]["status"] == 201 and b'"served_by":"router"' in replayed[1]["body"]
    assert reached_router == [b'{"campaign_id": "cmp-3", "bid_micros": 4}']


async def _call(app: FastAPI, chunks: list[bytes]) -> list[dict]:
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/bids", "raw_path": b"/bids", "root_path": "", "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"host", b"test")], "server": ("test", 80),
        "client": ("127.0.0.1", 1), "state": {},
    }  # fmt: skip
    await app(scope, receive, send)
    return sent


def test_the_service_serves_its_three_hot_routes_directly():
    table = direct_routes(create_app(Settings(_env_file=None)))
    assert {path: route.status_code for path, route in table.items()} == {
        "/v1/auction": 200,
        "/openrtb2/auction": 200,
        "/v1/events": 202,
    }
    assert {path: route.endpoint.__name__ for path, route in table.items()} == {
        "/v1/auction": "auction",
        "/openrtb2/auction": "openrtb_auction",
        "/v1/events": "post_events",
    }


def test_direct_routes_are_installed_only_with_the_fast_path_on():
    def installed(fast_path: bool) -> bool:
        app = create_app(Settings(_env_file=None, auction_fast_path=fast_path))
        return any(middleware.cls is DirectRoutes for middleware in app.user_middleware)

    assert installed(True) and not installed(False)
