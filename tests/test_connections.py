"""The worker's Redis connections skip the socket timeout's timer only where nothing can wait (issue 17):
replies already buffered and writes the kernel took whole. Anything that can wait still times out."""

from __future__ import annotations

import asyncio
import socket

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mediaq.runtime.connections import redis_retry, retrying_pool, with_db


def _client(url: str, timeout: float, **kwargs) -> aioredis.Redis:
    pool = retrying_pool(url, socket_connect_timeout=2, socket_timeout=timeout, retry=redis_retry(0), **kwargs)
    return aioredis.Redis(connection_pool=pool)


async def test_pipelined_replies_errors_and_binary_values_come_back_in_order(redis_server):
    client = _client(with_db(redis_server.url, 5, keep_explicit=False), 30)
    try:
        async with client.pipeline(transaction=False) as pipe:
            pipe.set("k", b"\x00\xffv").get("k").lpush("k", 1).incr("n").get("missing")
            out = await pipe.execute(raise_on_error=False)
        assert out[:2] == [True, b"\x00\xffv"] and isinstance(out[2], ResponseError) and out[3:] == [1, None]
        async with client.pipeline(transaction=True) as pipe:
            pipe.incr("n").incr("n").get("k")
            assert await pipe.execute() == [2, 3, b"\x00\xffv"]
        with pytest.raises(ResponseError):
            await client.lpush("k", 1)
        assert await client.get("k") == b"\x00\xffv"  # the connection is still in step
        await client.delete("k", "n")
    finally:
        await client.aclose()


async def _silent_server(*, read: bool) -> tuple[socket.socket, list[socket.socket], list[asyncio.Task]]:
    """A server that accepts and never answers (and, unless ``read``, never reads)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    accepted: list[socket.socket] = []
    readers: list[asyncio.Task] = []

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(listener)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            accepted.append(conn)
            if read:
                readers.append(asyncio.ensure_future(_drain(loop, conn)))

    readers.append(asyncio.create_task(serve()))  # grows as connections come: all cancelled at the end
    return listener, accepted, readers


async def _drain(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    while await loop.sock_recv(conn, 65536):
        pass


@pytest.mark.parametrize("read", [True, False], ids=["reply-never-comes", "write-never-drains"])
async def test_a_server_that_stops_answering_still_times_out(read):
    listener, accepted, tasks = await _silent_server(read=read)
    # no handshake (no password, db 0, no CLIENT SETINFO): the command's own read or write is what waits
    client = _client(f"redis://127.0.0.1:{listener.getsockname()[1]}/0", 0.5, lib_name=None, lib_version=None)
    try:
        with pytest.raises(RedisTimeoutError, match="reading" if read else "writing"):
            # a value far larger than the socket buffers: the write itself must wait when nobody reads
            await asyncio.wait_for(client.set("k", b"x" * (1 if read else 64 * 1024 * 1024)), 20)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aclose()
        for conn in accepted:
            conn.close()
        listener.close()


async def test_a_pooled_connection_with_an_unread_reply_or_closed_by_the_server_is_not_reused_as_is(redis_server):
    url = with_db(redis_server.url, 5, keep_explicit=False)
    client = _client(url, 30)
    try:
        pool = client.connection_pool
        conn = await pool.get_connection()
        await conn.send_command("ECHO", "stale")  # its reply is never read
        await asyncio.sleep(0.2)
        await pool.release(conn)
        assert await client.echo("fresh") == b"fresh"
        other = _client(url, 30)
        try:
            await other.client_kill_filter(_id=await client.client_id())  # closed while idle in the pool
        finally:
            await other.aclose()
        await asyncio.sleep(0.2)
        assert await client.echo("again") == b"again"
    finally:
        await client.aclose()
