"""The service's uvicorn set-up: a response leaves in one write, and nothing written is lost."""

from __future__ import annotations

import asyncio
import socket

import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from auction_service.fastpath.server import CoalescingHttpToolsProtocol, CoalescingTransport, config
from tests.auction_service.conftest import live_server


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_writes_in_one_loop_turn_leave_as_one_write_at_its_end() -> None:
    async def scenario() -> list[list[bytes]]:
        real = RecordingTransport()
        transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        transport.write(b"ok")
        during = list(real.writes)
        await asyncio.sleep(0)  # the end of the turn
        after_first = list(real.writes)
        transport.write(b"next")
        await asyncio.sleep(0)
        return [during, after_first, real.writes]

    during, after_first, after_second = asyncio.run(scenario())
    assert during == []
    assert after_first == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    assert after_second == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", b"next"]


def test_close_sends_what_was_written_first_and_a_gone_peer_gets_nothing() -> None:
    async def scenario() -> tuple[RecordingTransport, RecordingTransport]:
        loop = asyncio.get_running_loop()
        closed = RecordingTransport()
        transport = CoalescingTransport(closed, loop)  # type: ignore[arg-type]
        transport.write(b"last response")
        transport.close()
        assert closed.writes == [b"last response"] and closed.closed

        gone = RecordingTransport()
        transport = CoalescingTransport(gone, loop)  # type: ignore[arg-type]
        transport.write(b"too late")
        gone.closing = True
        await asyncio.sleep(0)
        assert transport.get_extra_info("peername") == "info:peername"  # the rest is the real transport's
        return closed, gone

    closed, gone = asyncio.run(scenario())
    assert closed.writes == [b"last response"]
    assert gone.writes == []


def _read_response(sock: socket.socket, buffer: bytes) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response with a content-length, and what came after it."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the head"
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    length = int(lengths[0])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the body"
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


@pytest.mark.parametrize("fast_path", [True, False], ids=["coalescing", "uvicorn-default"])
def test_a_real_server_answers_pipelined_and_closing_requests_whole(fast_path: bool) -> None:
    app = FastAPI()

    @app.get("/echo/{word}")
    async def echo(word: str) -> PlainTextResponse:
        return PlainTextResponse(word * 1000)

    with live_server(app, fast_path=fast_path) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            # Three requests in one segment, the last asking to close: three whole responses, then EOF.
            sock.sendall(
                b"GET /echo/a HTTP/1.1\r\nhost: t\r\n\r\n"
                b"GET /echo/b HTTP/1.1\r\nhost: t\r\n\r\n"
                b"GET /echo/c HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
            )
            rest = b""
            bodies = []
            for _ in range(3):
                response, rest = _read_response(sock, rest)
                assert response.startswith(b"HTTP/1.1 200 OK\r\n")
                bodies.append(response.partition(b"\r\n\r\n")[2])
            assert bodies == [b"a" * 1000, b"b" * 1000, b"c" * 1000]
            assert rest == b"" and sock.recv(1) == b""  # closed after the last response, nothing more


def test_the_coalescing_protocol_is_the_fast_paths_and_uvicorns_own_otherwise() -> None:
    app = FastAPI()
    assert config(app, host="127.0.0.1", port=1, fast_path=True).http is CoalescingHttpToolsProtocol
    assert config(app, host="127.0.0.1", port=1, fast_path=False).http == "auto"  # uvicorn's default
