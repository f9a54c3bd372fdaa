"""uvicorn, with each response written to the socket in one piece.

uvicorn's HTTP protocol writes a response's head when the app sends ``http.response.start``
and its body at ``http.response.body``: two ``send`` syscalls and, with TCP_NODELAY, two
segments per response, each waking the client. At a few thousand small auction responses a
second that is a tenth of the service's GIL time (py-spy ``--gil``, ``adstream bench auction``).
``CoalescingTransport`` holds what is written during one turn of the event loop and sends
it together at the end of that turn, so a response costs one syscall.

With AUCTION_FAST_PATH off the service runs on uvicorn's own protocol instead.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """A transport whose writes within one loop turn go out as one ``write``; the rest is the real one's."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data, self._pending = b"".join(self._pending), []
        if not self._transport.is_closing():  # the peer went away meanwhile: as a direct write would
            self._transport.write(data)

    def close(self) -> None:
        self.flush()  # a response then close (no keep-alive): the response first
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a ``CoalescingTransport``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]


def config(app: Any, *, host: str, port: int, fast_path: bool) -> uvicorn.Config:
    """uvicorn's configuration for ``app``: the coalescing protocol with ``fast_path``, else uvicorn's default."""
    http: type[asyncio.Protocol] | str = CoalescingHttpToolsProtocol if fast_path else "auto"
    return uvicorn.Config(app, host=host, port=port, log_level="warning", http=http, ws="none")


def shared_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` that other replicas may bind too (SO_REUSEPORT).

    The kernel spreads new connections over every replica's socket; one replica killed takes only
    its own connections with it, and a restarted one joins without a balancer in front.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(app: Any, *, host: str, port: int, fast_path: bool) -> None:
    """Serves ``app`` until SIGINT/SIGTERM, then finishes the requests in progress.

    ``fast_path`` is AUCTION_FAST_PATH (``Settings.auction_fast_path``), the setting ``app`` was built with.
    The port may be shared with the service's other replicas (``shared_port_socket``).
    """
    uvicorn.Server(config(app, host=host, port=port, fast_path=fast_path)).run(sockets=[shared_port_socket(host, port)])
