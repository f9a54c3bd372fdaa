"""uvicorn, with each response written to the socket in one piece.

uvicorn's HTTP protocol writes a response's head when the app sends ``http.response.start``
and its body at ``http.response.body``: two ``send`` syscalls and, with TCP_NODELAY, two
segments per response, each waking the client. At a few thousand small auction responses a
second that is a tenth of the service's GIL time (py-spy ``--gil``, ``make bench-auction``).
``CoalescingTransport`` holds what is written during one turn of the event loop and sends
it together at the end of that turn, so a response costs one syscall.
"""

from __future__ import annotations

import asyncio
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


def config(app: Any, *, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, log_level="warning", http=CoalescingHttpToolsProtocol, ws="none")


def run(app: Any, *, host: str, port: int) -> None:
    """Serves ``app`` until SIGINT/SIGTERM, then finishes the requests in progress."""
    uvicorn.Server(config(app, host=host, port=port)).run()
