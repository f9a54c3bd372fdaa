"""The run-wide check of ``tests/conftest.py``: a 200 from ``/openrtb2/auction`` that is not an OpenRTB 2.6
BidResponse fails the test that received it, whichever client the test used; other routes are not checked.

Each test that provokes a violation clears ``openrtb_violations`` once it has asserted on it, or the
check would fail that test too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from types import SimpleNamespace
from typing import Any

import aiohttp
import httpx
import pytest
import requests
from fastapi import FastAPI
from fastapi.testclient import TestClient
from yarl import URL

from tests import conftest
from tests.conftest import openrtb_violations

NOT_A_BID_RESPONSE: dict[str, Any] = {"bidid": "a1", "seatbid": [{"bid": [{"price": "1.25"}]}]}
A_BID_RESPONSE: dict[str, Any] = {"id": "r1", "seatbid": [{"bid": [{"id": "b1", "impid": "1", "price": 1.25}]}]}
REQUEST = {"id": "r1", "imp": [{"id": "1", "banner": {}}], "site": {}}
NOT_CONFORMING = r"not an OpenRTB 2\.6 BidResponse"


def bidder(answer: dict[str, Any]) -> FastAPI:
    """An app answering ``answer`` with 200 on every POST path."""
    app = FastAPI()

    @app.post("/{path:path}")
    async def post(path: str) -> dict[str, Any]:
        return answer

    return app


def take_violations() -> list[str]:
    taken = list(openrtb_violations)
    openrtb_violations.clear()
    return taken


def test_the_test_client_raises_on_a_non_conforming_answer_and_only_on_the_openrtb_route():
    with TestClient(bidder(NOT_A_BID_RESPONSE)) as client:
        with pytest.raises(AssertionError, match=r"\$\.seatbid\[0\]\.bid\[0\]\.price: '1.25' is not of type"):
            client.post("/openrtb2/auction", json=REQUEST)
        assert client.post("/v1/auction", json={}).status_code == 200
    (violation,) = take_violations()
    assert violation.startswith("/openrtb2/auction answered 200 with a body that is not an OpenRTB 2.6 BidResponse")


def test_a_conforming_answer_passes_every_client():
    with TestClient(bidder(A_BID_RESPONSE)) as client:
        assert client.post("/openrtb2/auction", json=REQUEST).json() == A_BID_RESPONSE


def test_the_async_client_raises_on_a_non_conforming_answer():
    async def post() -> None:
        transport = httpx.ASGITransport(app=bidder(NOT_A_BID_RESPONSE))
        async with httpx.AsyncClient(transport=transport, base_url="http://bidder") as client:
            await client.post("/openrtb2/auction", json=REQUEST)

    with pytest.raises(AssertionError, match=NOT_CONFORMING):
        asyncio.run(post())
    assert len(take_violations()) == 1


class CannedAdapter(requests.adapters.BaseAdapter):
    """Answers every request with 200 and ``body``, without a network (what reaches ``Session.send`` is real)."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__()
        self.body = body

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        response = requests.Response()
        response.status_code, response.url, response.request = 200, request.url, request
        response._content = json.dumps(self.body).encode()
        return response

    def close(self) -> None:
        pass


def test_a_requests_session_as_schemathesis_uses_raises_on_a_non_conforming_answer():
    with requests.Session() as session:
        session.mount("http://bidder", CannedAdapter(NOT_A_BID_RESPONSE))
        with pytest.raises(AssertionError, match=NOT_CONFORMING):
            session.post("http://bidder/openrtb2/auction", json=REQUEST, stream=True)
        assert session.post("http://bidder/v1/auction", json={}).status_code == 200
    assert len(take_violations()) == 1


def test_aiohttp_sessions_are_checked():
    assert aiohttp.ClientSession._request.__qualname__.startswith("_checked_aiohttp")

    async def answered(path: str, *args: Any, **kwargs: Any) -> SimpleNamespace:
        async def read() -> bytes:
            return json.dumps(NOT_A_BID_RESPONSE).encode()

        return SimpleNamespace(status=200, url=URL(f"http://bidder{path}"), read=read)

    checked = conftest._checked_aiohttp(lambda session, method, path, **kwargs: answered(path))
    assert asyncio.run(checked(None, "POST", "/v1/auction")).status == 200
    with pytest.raises(AssertionError, match=NOT_CONFORMING):
        asyncio.run(checked(None, "POST", "/openrtb2/auction"))
    assert len(take_violations()) == 1


def test_an_answer_the_code_under_test_swallowed_still_fails_its_test():
    check = conftest.pytest_runtest_call(item=None)
    next(check)  # the test starts
    # Swallowed, as by code under test with a broad ``except``.
    with TestClient(bidder(NOT_A_BID_RESPONSE)) as client, contextlib.suppress(AssertionError):
        client.post("/openrtb2/auction", json=REQUEST)
    with pytest.raises(AssertionError, match=NOT_CONFORMING):
        check.send(None)  # the test returns
    assert len(take_violations()) == 1
