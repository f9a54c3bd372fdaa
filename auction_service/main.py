"""The auction service's FastAPI app: routes, lifespan, and the errors every route shares.

python -m auction_service            (uvicorn on BIND_HOST:AUCTION_PORT)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from adstream.settings import LOCAL_DEFAULT_SECRETS, Settings, get_settings
from auction_service.api.routes import auction, campaigns, events, ops
from auction_service.model import ModelNotReady
from auction_service.state import ServiceState


class DefaultTokenOutsideLocal(RuntimeError):
    """The service refuses to start with the shipped token anywhere but the embedded stack."""


def check_token(settings: Settings) -> None:
    if not settings.is_local and settings.auction_api_token.get_secret_value() in LOCAL_DEFAULT_SECRETS:
        raise DefaultTokenOutsideLocal(
            f"AUCTION_API_TOKEN is empty or the local default while ADSTREAM_ENV={settings.adstream_env.value}; "
            "set a real token"
        )


def _describe(error: dict) -> str:
    where = ".".join(str(part) for part in error["loc"] if part != "body") or "body"
    return f"{where}: {error['msg']}"


def create_app(settings: Settings | None = None, state: ServiceState | None = None) -> FastAPI:
    """The app; ``state`` is opened and started in the lifespan unless a test passes one in."""
    settings = settings or (state.settings if state else get_settings())
    check_token(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = state or ServiceState.open(settings)
        if state is None:
            service.start()
        app.state.service = service
        try:
            yield
        finally:
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

    @app.middleware("http")
    async def cap_body_size(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        limit = settings.auction_max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return JSONResponse({"detail": f"request body over {limit} bytes; send smaller batches"}, status_code=413)
        if declared is None and request.method in ("POST", "PUT", "PATCH"):
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    return JSONResponse(
                        {"detail": f"request body over {limit} bytes; send smaller batches"}, status_code=413
                    )
            request._body = body  # already read: let the route see it
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        return JSONResponse(
            {"detail": "; ".join(_describe(error) for error in errors[:20]), "errors": jsonable(errors[:20])},
            status_code=422,
        )

    @app.exception_handler(ModelNotReady)
    async def model_not_ready(request: Request, exc: ModelNotReady) -> JSONResponse:
        return JSONResponse({"detail": f"no CTR model loaded: {exc}"}, status_code=503, headers={"Retry-After": "5"})

    for router in (auction.router, events.router, campaigns.router, ops.router):
        app.include_router(router)
    return app


def jsonable(errors: list[dict]) -> list[dict]:
    return [{"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]} for error in errors]
