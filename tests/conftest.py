"""Shared fixtures: one real Kafka broker and one Spark session per test run.

The broker is started from the jar cache `make setup` fills, on free ports in a
temporary directory, and stopped (its whole process group) when the run ends.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Generator, Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from adstream.settings import Settings
from benchmarks.harness import free_port, isolated_settings
from devstack import services
from spark_jobs.session import get_spark

__all__ = ["free_port", "make_settings", "shared_namespace"]  # what the tests import from here

# Settings isolated in a test's temporary directory, on free ports, sharing the project's jar cache.
make_settings = isolated_settings


@pytest.fixture(scope="session")
def kafka_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings whose KAFKA_BOOTSTRAP_SERVERS is a live single-node KRaft broker."""
    settings = make_settings(tmp_path_factory.mktemp("kafka"))
    (broker,) = services.build_services(settings, ["kafka"])
    services.start(settings, broker)
    try:
        services.wait_healthy(settings, broker)
        yield settings
    finally:
        assert services.stop(settings, broker) == "stopped"


@pytest.fixture(scope="session")
def shared_store_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live redis-server (the auction replicas' shared store) for the whole run; tests isolate themselves by
    SHARED_STORE_NAMESPACE (``shared_namespace``)."""
    settings = make_settings(tmp_path_factory.mktemp("shared-store"))
    (server,) = services.build_services(settings, ["shared-store"])
    services.start(settings, server)
    try:
        services.wait_healthy(settings, server)
        yield settings.shared_store_url
    finally:
        assert services.stop(settings, server) == "stopped"


def shared_namespace() -> str:
    """A namespace of the shared store no other test uses."""
    return f"t{free_port()}-{time.monotonic_ns() % 1_000_000}"


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory):
    """One small Delta-enabled session for the whole run (local[1], one shuffle partition, no UI)."""
    settings = make_settings(tmp_path_factory.mktemp("spark"), spark_master="local[1]")
    session = get_spark(
        "adstream-tests",
        settings,
        extra={
            "spark.sql.shuffle.partitions": "1",
            "spark.ui.enabled": "false",
            "spark.driver.memory": "1g",
            "spark.databricks.delta.snapshotPartitions": "1",
        },
    )
    yield session
    session.stop()


# --- Every OpenRTB bid response a test receives is checked against OpenRTB 2.6 ---
#
# The HTTP clients the tests use are patched for the whole run: httpx (Starlette's TestClient and
# httpx.post), and, when a test module imported them, requests (schemathesis) and aiohttp (the
# simulator). A 200 answer to a path ending in /openrtb2/auction that is not a BidResponse raises
# where the client returns it; ``pytest_runtest_call`` fails the test too if the code under test
# swallowed that error. The schema is loaded, and its validator compiled, at the first such answer;
# validating then costs about 0.35 ms a one-bid response (timeit, 2,000 runs).

OPENRTB_ROUTE = "/openrtb2/auction"
openrtb_violations: list[str] = []  # this test's non-conforming answers, raised or not
__all__ += ["openrtb_violations"]


def _check_openrtb_answer(path: str, body: bytes) -> None:
    from tests.openrtb.conformance import validate_bid_response  # jsonschema only for runs that need it

    try:
        validate_bid_response(json.loads(body))
    except (AssertionError, ValueError) as exc:
        message = f"{path} answered 200 with a body that is not an OpenRTB 2.6 BidResponse: {exc}"
        openrtb_violations.append(message)
        raise AssertionError(message) from None


def _checked_httpx(send):
    def checked_send(self, request, *args, **kwargs):
        response = send(self, request, *args, **kwargs)
        if response.status_code == 200 and request.url.path.endswith(OPENRTB_ROUTE):
            _check_openrtb_answer(request.url.path, response.read())
        return response

    return checked_send


def _checked_async_httpx(send):
    async def checked_send(self, request, *args, **kwargs):
        response = await send(self, request, *args, **kwargs)
        if response.status_code == 200 and request.url.path.endswith(OPENRTB_ROUTE):
            _check_openrtb_answer(request.url.path, await response.aread())
        return response

    return checked_send


def _checked_requests(send):
    def checked_send(self, request, *args, **kwargs):
        response = send(self, request, *args, **kwargs)
        path = urlsplit(request.url).path
        if response.status_code == 200 and path.endswith(OPENRTB_ROUTE):
            _check_openrtb_answer(path, response.content)
        return response

    return checked_send


def _checked_aiohttp(request):
    async def checked_request(self, *args, **kwargs):
        response = await request(self, *args, **kwargs)
        if response.status == 200 and response.url.path.endswith(OPENRTB_ROUTE):
            _check_openrtb_answer(response.url.path, await response.read())
        return response

    return checked_request


@pytest.fixture(scope="session", autouse=True)
def openrtb_answers_conform() -> Iterator[None]:
    """Patches the HTTP clients for the run (see above). requests and aiohttp only when already imported:
    collection imported every test module, and with them the clients they use."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(httpx.Client, "send", _checked_httpx(httpx.Client.send))
        patch.setattr(httpx.AsyncClient, "send", _checked_async_httpx(httpx.AsyncClient.send))
        if (requests := sys.modules.get("requests")) is not None:
            patch.setattr(requests.Session, "send", _checked_requests(requests.Session.send))
        if (aiohttp := sys.modules.get("aiohttp")) is not None:
            patch.setattr(aiohttp.ClientSession, "_request", _checked_aiohttp(aiohttp.ClientSession._request))
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    openrtb_violations.clear()
    result = yield  # a test that failed already (by the client's AssertionError or otherwise) stays as it failed
    if openrtb_violations:
        raise AssertionError("\n".join(openrtb_violations))
    return result
