"""The dashboard's HTTP side: the page, its chart library, and the snapshot as JSON and as server-sent events.

    GET /                the page (static/index.html)
    GET /api/snapshot    every section, as JSON (what the page shows)
    GET /api/stream      the same, pushed every DASHBOARD_REFRESH_S (text/event-stream)
    GET /vendor/uplot.*  uPlot, installed by `make setup` from npm into LOCAL_DIR/dashboard-node
    GET /reports/data-docs/...   Great Expectations' Data Docs of every validation (REPORTS_DIR/data_docs)
    GET /reports/billing/...     the bills' reports: finance.html (the latest hours), <day>/finance.html, CSVs
    GET /healthz         liveness, open

Read-only. In local mode the page is open; elsewhere every route but /healthz asks for AUCTION_API_TOKEN,
the campaign API's token, as a bearer token or as the password of HTTP basic auth (which a browser asks
for itself and sends with the page's event stream too).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from adstream.settings import LOCAL_DEFAULT_SECRETS, Settings
from dashboard.sources import SnapshotBuilder

STATIC = Path(__file__).parent / "static"
UPLOT_FILES = {"uplot.js": "uPlot.iife.min.js", "uplot.css": "uPlot.min.css"}
REPORT_FOLDERS = {"data-docs": "data_docs", "billing": "billing"}  # URL name -> folder under REPORTS_DIR
MISSING_CHARTS = "window.UPLOT_MISSING = 'uPlot is not installed: run `make setup`';\n"


def chart_library_dir(settings: Settings) -> Path:
    return settings.local_dir.resolve() / "dashboard-node" / "node_modules" / "uplot" / "dist"


def jsonable(value: Any) -> Any:
    """``value`` with NaN and infinities as null (JSON has neither; JSON.parse refuses them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def require_viewer(request: Request) -> None:
    """Open in local mode; else AUCTION_API_TOKEN as ``Bearer <token>`` or as basic auth's password."""
    settings: Settings = request.app.state.settings
    if settings.is_local:
        return
    expected = settings.auction_api_token.get_secret_value().encode()
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    given = b""
    if scheme.lower() == "bearer":
        given = credentials.strip().encode()
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(credentials.strip(), validate=True).partition(b":")[2]
        except (binascii.Error, ValueError):
            given = b""
    if not given:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "the dashboard needs AUCTION_API_TOKEN: 'Authorization: Bearer <token>', or any user name with the "
            "token as password",
            headers={"WWW-Authenticate": 'Basic realm="AdStream dashboard", charset="UTF-8"'},
        )
    if not hmac.compare_digest(given, expected):  # constant time
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the token is not AUCTION_API_TOKEN")


Viewer = Depends(require_viewer)


def create_app(settings: Settings, builder: SnapshotBuilder | None = None) -> FastAPI:
    """The dashboard for ``settings``; ``builder`` reads the sources (default: the ones ``settings`` name)."""
    if not settings.is_local and settings.auction_api_token.get_secret_value() in LOCAL_DEFAULT_SECRETS:
        raise ValueError(
            f"AUCTION_API_TOKEN is a local default while ADSTREAM_ENV={settings.adstream_env.value}; set a real token"
        )
    snapshots = builder or SnapshotBuilder(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        snapshots.close()

    app = FastAPI(title="AdStream dashboard", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.snapshots = snapshots
    refresh_s = settings.dashboard_refresh_s
    charts = chart_library_dir(settings)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", dependencies=[Viewer])
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}", dependencies=[Viewer])
    def static(name: str) -> FileResponse:
        path = STATIC / name
        if name not in {"dashboard.js", "dashboard.css"} or not path.is_file():
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no static file {name!r}")
        return FileResponse(path)

    @app.get("/vendor/{name}", dependencies=[Viewer])
    def vendor(name: str) -> Response:
        if name not in UPLOT_FILES:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no file {name!r}; there are {sorted(UPLOT_FILES)}")
        path = charts / UPLOT_FILES[name]
        if path.is_file():
            return FileResponse(path, headers={"Cache-Control": "max-age=3600"})
        # The page shows its tables and says why there are no charts, rather than failing to load a script.
        body = MISSING_CHARTS if name.endswith(".js") else ""
        return Response(body, media_type="text/javascript" if name.endswith(".js") else "text/css")

    @app.get("/reports/{kind}/{path:path}", dependencies=[Viewer])
    def report(kind: str, path: str) -> FileResponse:
        """A file of the Data Docs site or of the bills' reports; nothing outside their folders."""
        if kind not in REPORT_FOLDERS:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no reports {kind!r}; there are {sorted(REPORT_FOLDERS)}")
        root = (settings.reports_dir / REPORT_FOLDERS[kind]).resolve()
        target = (root / path).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            built = "a validation builds them" if kind == "data-docs" else "hourly_billing writes them"
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no report {kind}/{path} yet: {built}")
        return FileResponse(target, headers={"Cache-Control": "no-cache"})

    async def snapshot_body() -> dict[str, Any]:
        snap = await asyncio.to_thread(snapshots.latest, refresh_s / 2)
        return jsonable(snap.body)

    @app.get("/api/snapshot", dependencies=[Viewer])
    async def snapshot() -> JSONResponse:
        return JSONResponse(await snapshot_body(), headers={"Cache-Control": "no-store"})

    @app.get("/api/stream", dependencies=[Viewer])
    async def stream(request: Request) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            yield f"retry: {int(refresh_s * 1000)}\n\n"
            while not await request.is_disconnected():
                body = await snapshot_body()
                yield f"event: snapshot\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"
                await asyncio.sleep(refresh_s)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )

    return app
