"""The auction service's FastAPI app: routes, lifespan, and the errors every route shares.

``adstream serve`` runs it under ``auction_service.fastpath.server`` on BIND_HOST:AUCTION_PORT.
With AUCTION_FAST_PATH on (the default) the hot routes are served by ``DirectRoutes``
(``auction_service.fastpath.routes``); off, every route goes through FastAPI's router.
Both give the same answers: the routes return their response models and both ways
serialize them with pydantic.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import get_type_hints

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import TypeAdapter
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from adstream.settings import LOCAL_DEFAULT_SECRETS, Settings
from adstream.signing import EventSigner
from auction_service.api.routes import auction, campaigns, creatives, events, ops
from auction_service.api.schemas import openapi_as_answered, openrtb_path, openrtb_refusal
from auction_service.fastpath.routes import DirectRoute, DirectRoutes, replaying
from auction_service.serving.champion import ModelNotReady
from auction_service.serving.flows import relay_journal
from auction_service.serving.metrics import status_reason
from auction_service.serving.shared import SharedStoreUnavailable
from auction_service.serving.state import ServiceState

OPENRTB_PATH = "/openrtb2/auction"


class DefaultTokenOutsideLocal(RuntimeError):
    """The service refuses to start with the shipped token anywhere but the embedded stack."""


def check_token(settings: Settings) -> None:
    if not settings.is_local and settings.auction_api_token.get_secret_value() in LOCAL_DEFAULT_SECRETS:
        raise DefaultTokenOutsideLocal(
            f"AUCTION_API_TOKEN is empty or the local default while ADSTREAM_ENV={settings.adstream_env.value}; "
            "set a real token"
        )
    try:
        EventSigner.from_settings(settings)  # the default signing key, or none, refuses to start here too
    except ValueError as exc:
        raise DefaultTokenOutsideLocal(str(exc)) from exc


class BodySizeCap:
    """413 for a body over ``limit`` bytes, declared or (chunked) counted while it arrives.

    Plain ASGI rather than ``@app.middleware("http")``: that wraps every request in a task
    and a stream pair, a fixed cost the auction path pays thousands of times a second.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.limit:
                await self._too_large(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        # Chunked: read it all (up to the cap) first, then hand the app the same messages.
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._too_large(scope, receive, send)
                return
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        await self.app(scope, replaying(messages, receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        count_rejected(scope.get("app"), "body_too_large")
        detail = {"detail": f"request body over {self.limit} bytes; send smaller batches"}
        await JSONResponse(detail, status_code=413)(scope, receive, send)


def calm_garbage_collector() -> None:
    """Fewer, shorter collector pauses, which are most of the auction path's tail latency.

    What is loaded at start (model, features, campaigns) lives as long as the process:
    ``freeze`` takes it out of every later collection. What an auction leaves behind for
    minutes (its served row, its reservation) is held as plain tuples, which the collector
    untracks, so the older generations stay small. The youngest is collected every 10,000
    net allocations: a pause of 3-5 ms at 1,800 auctions/s (50,000 paused 20-25 ms).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def count_rejected(app: FastAPI | None, reason: str) -> None:
    """Counts a 4xx answer on /metrics (``adstream_rejected_requests_total``), once the service state is set."""
    service = getattr(getattr(app, "state", None), "service", None)
    if service is not None:
        service.metrics.rejected_requests.labels(reason=reason).inc()


def _describe(error: dict) -> str:
    where = ".".join(str(part) for part in error["loc"] if part != "body") or "body"
    return f"{where}: {error['msg']}"


def create_app(settings: Settings | None = None, state: ServiceState | None = None) -> FastAPI:
    """The app; ``state`` is opened and started in the lifespan unless a test passes one in.

    ``settings`` default to the state's; one of the two is needed.
    """
    if settings is None:
        if state is None:
            raise TypeError("create_app needs the settings or a service state")
        settings = state.settings
    check_token(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = state or ServiceState.open(settings)
        if state is None:
            service.start()
        app.state.service = service
        calm_garbage_collector()
        relay = asyncio.create_task(relay_journal(service), name="journal-relay")
        try:
            yield
        finally:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
            if state is None:
                service.stop()

    app = FastAPI(
        title="AdStream auction service",
        version="1",
        summary="Second-price ad auctions scored by ctr-model@champion, campaign management and feedback events.",
        lifespan=lifespan,
    )
    if state is not None:
        app.state.service = state

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        count_rejected(request.app, "invalid_request")
        if request.url.path == OPENRTB_PATH:  # an exchange expects 400 with where and what
            pairs = [(openrtb_path(error["loc"]), error["msg"]) for error in errors[:20]]
            return JSONResponse(openrtb_refusal(pairs), status_code=400)
        return JSONResponse(
            {"detail": "; ".join(_describe(error) for error in errors[:20]), "errors": jsonable(errors[:20])},
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def refused(request: Request, exc: StarletteHTTPException) -> Response:
        if 400 <= exc.status_code < 500:
            count_rejected(request.app, status_reason(exc.status_code))
        return await http_exception_handler(request, exc)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(PoolTimeout)
    async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # The campaign store is down, locked past its timeout or out of connections: a retry may succeed.
        return JSONResponse(
            {"detail": f"the campaign store is unavailable ({type(exc).__name__}); retry: nothing was changed"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(SharedStoreUnavailable)
    async def shared_store_unavailable(request: Request, exc: SharedStoreUnavailable) -> JSONResponse:
        # Budgets, caps and served auctions live there: no replica serves or charges without it.
        return JSONResponse(
            {"detail": f"{exc}; retry: nothing was served or charged"}, status_code=503, headers={"Retry-After": "1"}
        )

    @app.exception_handler(ModelNotReady)
    async def model_not_ready(request: Request, exc: ModelNotReady) -> JSONResponse:
        return JSONResponse({"detail": f"no CTR model loaded: {exc}"}, status_code=503, headers={"Retry-After": "5"})

    for router in (auction.router, events.router, campaigns.router, creatives.router, ops.router):
        app.include_router(router)
    app.openapi = openapi_as_answered(app)  # type: ignore[method-assign]
    if settings.auction_fast_path:
        app.add_middleware(DirectRoutes, routes=direct_routes(app), exception_handlers=app.exception_handlers)
    # Added last is outermost: the size cap sees every request before the direct routes do.
    app.add_middleware(BodySizeCap, limit=settings.auction_max_body_bytes)
    return app


HOT_ENDPOINTS = (auction.auction, auction.openrtb_auction, events.post_events)


def direct_routes(app: FastAPI) -> dict[str, DirectRoute]:
    """The hot routes by path, with the path, body type and status taken from the app's own routes."""
    table = {}
    for route in app.routes:
        if isinstance(route, APIRoute) and route.endpoint in HOT_ENDPOINTS and route.methods == {"POST"}:
            body_type = get_type_hints(route.endpoint)["body"]
            table[route.path] = DirectRoute(
                TypeAdapter(body_type), route.endpoint, route.status_code or 200, route.response_model_exclude_none
            )
    return table


def jsonable(errors: list[dict]) -> list[dict]:
    return [{"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]} for error in errors]
