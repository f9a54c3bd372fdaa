"""The request path's pipelined RESP client on a real redis-server, a silent server and a closed port."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from auction_service.serving.resp import RespClient, Script
from tests.conftest import free_port, shared_namespace

COUNT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def with_db(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


def test_replies_match_their_commands_when_many_auctions_share_the_connection(shared_store_url):
    key = shared_namespace()

    async def main():
        client = RespClient(with_db(shared_store_url, 3), timeout_s=2.0)
        sets = await asyncio.gather(*(client.execute("HSET", key, f"c{i}", i) for i in range(200)))
        values = await asyncio.gather(*(client.execute("HGET", key, f"c{i}") for i in range(200)))
        many = await client.execute_many([("HLEN", key), ("HGET", key, "nothing"), ("HGETALL", key + "-none")])
        client.close()
        return sets, values, many

    sets, values, many = asyncio.run(main())
    assert sets == [1] * 200
    assert values == [str(i).encode() for i in range(200)]
    assert many == [200, None, []]
    # SELECT took: the hash is in db 3, not in db 0.
    assert redis.Redis.from_url(with_db(shared_store_url, 3)).hlen(key) == 200
    assert redis.Redis.from_url(with_db(shared_store_url, 0)).hlen(key) == 0


def test_a_script_the_server_forgot_is_loaded_again_and_an_error_reply_is_raised(shared_store_url):
    key = shared_namespace()
    script = Script(COUNT)

    async def main():
        client = RespClient(shared_store_url, timeout_s=2.0)
        first = await script(client, [key], [2])
        await client.execute("SCRIPT", "FLUSH")  # as after a restart without the scripts
        second = await script(client, [key], [3])
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await client.execute("HGET", key, "x")  # key holds a string
        after_error = await client.execute("GET", key)
        client.close()
        return first, second, after_error

    assert asyncio.run(main()) == (2, 5, b"5")


def test_a_server_that_does_not_answer_fails_every_waiting_command_in_time_then_the_next_reconnects():
    accepted = []

    async def main():
        async def silent(reader, writer):
            accepted.append(writer)
            await reader.read(1 << 16)  # reads the commands, never answers

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = RespClient(f"redis://127.0.0.1:{port}/0", timeout_s=0.3)
        began = time.monotonic()
        results = await asyncio.gather(*(client.execute("GET", f"k{i}") for i in range(5)), return_exceptions=True)
        waited = time.monotonic() - began
        again = await asyncio.gather(client.execute("GET", "k"), return_exceptions=True)
        client.close()
        server.close()
        return results, waited, again

    results, waited, again = asyncio.run(main())
    assert all(isinstance(r, RedisTimeoutError) for r in results), results
    assert waited < 1.5  # the timeout, not a hang
    assert isinstance(again[0], RedisTimeoutError)
    assert len(accepted) == 2  # the timed-out connection was dropped and a new one opened


def test_a_closed_port_is_a_connection_error():
    async def main():
        client = RespClient(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
        with pytest.raises(RedisConnectionError, match="could not connect"):
            await client.execute("PING")

    asyncio.run(main())


def test_a_wrong_password_is_refused_each_time_without_leaving_connections_open(shared_store_url):
    admin = redis.Redis.from_url(shared_store_url)
    before = len(admin.client_list())

    async def main():
        client = RespClient(shared_store_url.replace("redis://", "redis://:not-the-password@"), timeout_s=1.0)
        for _ in range(5):
            with pytest.raises(ResponseError, match="AUTH"):
                await client.execute("PING")
        await asyncio.sleep(0.2)  # the server sees the closes
        return len(admin.client_list())

    assert asyncio.run(main()) <= before
