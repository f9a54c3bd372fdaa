"""The echo baseline of `make bench-auction`: the least a FastAPI service on uvicorn can do per request.

One POST route on the path the bench drives (``/v1/auction``) answers the request's body, as it came,
as ``application/json``; its ``x-echo-pid`` header names the process that answered (so a test can see
that every replica serves). Stock uvicorn (the httptools protocol, no fast path of the service's) serves
it on a listening socket bound with SO_REUSEPORT by ``auction_service.fastpath.server.shared_port_socket``,
as the service's replicas bind theirs: N echo processes on one port are measured as N service replicas are.

    python -m benchmarks.echo --host 127.0.0.1 --port 8123   (the bench starts one per worker)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import uvicorn
from fastapi import FastAPI, Request, Response

from auction_service.fastpath.server import shared_port_socket

ROUTE = "/v1/auction"
PID_HEADER = "x-echo-pid"


def create_app() -> FastAPI:
    """The echo app; built in the process that serves it (the pid header is that process's)."""
    app = FastAPI()
    pid = str(os.getpid())

    @app.post(ROUTE)
    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/json", headers={PID_HEADER: pid})

    return app


def config(app: FastAPI, host: str, port: int) -> uvicorn.Config:
    """Stock uvicorn, as the service's is configured apart from its protocol: httptools, no websockets, warnings."""
    return uvicorn.Config(app, host=host, port=port, http="httptools", ws="none", log_level="warning")


def serve(host: str, port: int) -> None:
    """One echo worker on ``host:port`` (shared with the other workers) until SIGINT/SIGTERM."""
    uvicorn.Server(config(create_app(), host, port)).run(sockets=[shared_port_socket(host, port)])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
