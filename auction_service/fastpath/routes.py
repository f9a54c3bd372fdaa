"""The hot JSON routes served straight from ASGI, past Starlette's router and FastAPI's request pass.

At a few hundred requests a second per core, the router's scan, the exception-middleware
wrappers, dependency solving and the response-model pass cost about as much as the
auction itself. ``DirectRoutes`` serves a POST to one of its paths itself when the body is
``application/json`` and validates; the endpoint is the route's own function and its
errors go through the app's own exception handlers. Anything else (another content
type, a body that does not parse or validate, a disconnect) is replayed to the FastAPI
app untouched, so every error answer, and the OpenAPI schema, stay FastAPI's. A response
model the endpoint returns is serialized as FastAPI serializes a route's response model
(pydantic's JSON serializer, by alias), so both ways write the same bytes.

``create_app`` installs it only with AUCTION_FAST_PATH on.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette._exception_handler import _lookup_exception_handler
from starlette._utils import is_async_callable
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Endpoint = Callable[[Any, Request], Awaitable[Response | BaseModel]]


def replaying(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that hands out ``messages`` (already read) first, then the real ones."""
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


@dataclass(frozen=True)
class DirectRoute:
    """``endpoint(body, request)`` for a validated ``body``; a model it returns is sent as JSON with ``status_code``."""

    body: TypeAdapter[Any]
    endpoint: Endpoint
    status_code: int = 200
    exclude_none: bool = False  # the route's response_model_exclude_none


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


class DirectRoutes:
    """Serves ``routes`` (POST path -> route) directly; see the module docstring."""

    def __init__(self, app: ASGIApp, routes: dict[str, DirectRoute], exception_handlers: dict[Any, Any]) -> None:
        # The app's handler table itself (not a copy): handlers added later are seen too.
        self.app, self.routes, self.exception_handlers = app, routes, exception_handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        messages, chunks = [], []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":  # a disconnect: FastAPI's own handling
                await self.app(scope, replaying(messages, receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        try:
            # FastAPI's own order: json.loads, then the body type validated in Python mode.
            body = route.body.validate_python(json.loads(b"".join(chunks)), from_attributes=True)
        except (ValueError, ValidationError, RecursionError):  # JSONDecodeError is a ValueError
            # FastAPI answers: 422 for what does not parse or validate, 400 for JSON nested past Python's stack.
            await self.app(scope, replaying(messages, receive), send)
            return
        request = Request(scope, replaying(messages, receive))
        try:
            response = await route.endpoint(body, request)
        except Exception as exc:
            handler = _lookup_exception_handler(self.exception_handlers, exc)
            if handler is None:
                raise  # the server-error middleware outside answers 500 and logs it
            if is_async_callable(handler):
                response = await handler(request, exc)
            else:
                response = await run_in_threadpool(handler, request, exc)
        if isinstance(response, BaseModel):
            body_json = response.__pydantic_serializer__.to_json(
                response, by_alias=True, exclude_none=route.exclude_none
            )
            response = Response(body_json, route.status_code, media_type="application/json")
        await response(scope, receive, send)
