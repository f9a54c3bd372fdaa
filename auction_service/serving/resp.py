"""The request path's client of the shared store: one pipelined RESP connection per event loop.

redis-py's asyncio client checks a connection out of a pool, wraps each command in a retry and a
timeout context and parses in Python around hiredis: about 50 µs of the event loop's time per
command, two commands per auction (py-spy, ``adstream bench auction``). Here a command is packed by
hiredis and written to one connection that every auction of the loop shares (the commands of one loop
turn in one write), and its reply is matched to it in order (RESP answers in the order it was asked).
A reply late past the timeout fails every command waiting on that connection, which is closed: the next
command opens another.
Scripts go by their SHA1 and are loaded once when the server does not know them (a restart).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
from typing import Any

import hiredis
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.pending: collections.deque[asyncio.Future] = collections.deque()
        self.lost = False
        self.unsent: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def write(self, command: bytes) -> None:
        """Queues ``command``; what the auctions of one loop turn asked goes out in one write at its end."""
        if not self.unsent:
            asyncio.get_running_loop().call_soon(self.flush)
        self.unsent.append(command)

    def flush(self) -> None:
        unsent, self.unsent = self.unsent, []
        if self.transport is not None and not self.lost:
            self.transport.write(b"".join(unsent))

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future = self.pending.popleft()
            if future.done():  # its caller gave up (cancelled): the reply is dropped, the order kept
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(ResponseError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"the connection closed ({exc.__class__.__name__ if exc else 'by the server'})"))

    def fail(self, error: RedisError) -> None:
        self.lost = True
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.close()


class RespClient:
    """Commands to the store at ``url`` (redis://[:password@]host:port/db) from one event loop."""

    def __init__(self, url: str, timeout_s: float) -> None:
        options = parse_url(url)
        self._host, self._port = options.get("host", "localhost"), int(options.get("port", 6379))
        self._auth = [a for a in (options.get("username"), options.get("password")) if a]
        self._db = int(options.get("db", 0))
        self._timeout_s = timeout_s
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._timeout_s):
            _, connection = await loop.create_connection(_Connection, self._host, self._port)
        setup = []
        if self._auth:
            setup.append(self._send(connection, ("AUTH", *self._auth)))
        if self._db:
            setup.append(self._send(connection, ("SELECT", self._db)))
        try:
            for reply in setup:
                await self._wait(connection, reply)
        except RedisError:  # a wrong password or database: no connection is left open per attempt
            connection.fail(RedisConnectionError("the connection was refused at its set-up"))
            raise
        return connection

    async def _ready(self) -> _Connection:
        connection = self._connection
        if connection is not None and not connection.lost:
            return connection
        if self._connecting is None:  # one connect for every command that finds the connection gone
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            self._connection = await asyncio.shield(connecting)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"could not connect to {self._host}:{self._port} ({exc})") from exc
        finally:
            if self._connecting is connecting:
                self._connecting = None
        return self._connection

    @staticmethod
    def _send(connection: _Connection, command: tuple[Any, ...]) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        connection.pending.append(future)
        connection.write(hiredis.pack_command(command))
        return future

    async def _wait(self, connection: _Connection, future: asyncio.Future) -> Any:
        loop = asyncio.get_running_loop()
        late = loop.call_later(self._timeout_s, self._expire, connection, future)
        try:
            return await future
        finally:
            late.cancel()

    @staticmethod
    def _expire(connection: _Connection, future: asyncio.Future) -> None:
        if not future.done():  # its reply would come after the ones behind it are due: start over
            connection.fail(RedisTimeoutError("the shared store did not answer in time"))

    async def execute(self, *command: Any) -> Any:
        connection = await self._ready()
        return await self._wait(connection, self._send(connection, command))

    async def execute_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Sends ``commands`` at once and returns their replies in order (the first error is raised)."""
        connection = await self._ready()
        futures = [self._send(connection, command) for command in commands]
        return [await self._wait(connection, future) for future in futures]

    def close(self) -> None:
        if self._connection is not None and self._connection.transport is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed already: so is the socket
                self._connection.transport.close()
        self._connection = None


class Script:
    """A server-side script called by its SHA1, loaded when the server does not know it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def command(self, keys: list[Any], args: list[Any]) -> tuple[Any, ...]:
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    async def load(self, client: RespClient) -> None:
        await client.execute("SCRIPT", "LOAD", self.source)

    async def __call__(self, client: RespClient, keys: list[Any], args: list[Any]) -> Any:
        try:
            return await client.execute(*self.command(keys, args))
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.load(client)
        return await client.execute(*self.command(keys, args))
