"""Issue 9, items 2 and 3: Redis dies under a running batch, or during a bulk enqueue.

These tests need a server they may kill, so each starts its own embedded server in a tmp state
folder (the worker only restarts the *embedded* server: ``redis_url`` is None there).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

import mediaq
from mediaq.runtime.server import EmbeddedServer
from mediaq.runtime.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture
def embedded(tmp_path):
    """Settings on a private embedded server (AOF, fsync every second), stopped at the end."""
    settings = Settings.load(env={}, state_dir=tmp_path / "state", storage=tmp_path / "media", worker_processes=1,
                             poll_delay=0.05, health_check_interval=1, retry_backoff=0.2, connect_timeout=2)
    server = EmbeddedServer(settings.state_dir)
    server.ensure_running()
    workers: list[mediaq.LocalWorker] = []
    yield settings, server, workers
    for worker in workers:
        worker.stop(timeout=10)
    server.stop()


async def test_server_sigkilled_mid_batch_loses_no_acknowledged_job(embedded):
    settings, server, workers = embedded
    worker = mediaq.LocalWorker(settings.replace(max_jobs=20)).start()
    workers.append(worker)
    client = await mediaq.connect(settings=settings)
    try:
        n = 3000
        batch = await client.enqueue_many("sleep", [{"seconds": 0.05} for _ in range(n)], job_id="nap{index}",
                                          chunk_size=500)
        await asyncio.sleep(1.2)  # the whole batch was acknowledged more than a second ago

        while (await batch.status())["complete"] < 300:
            await asyncio.sleep(0.05)
        done_early = {i for i, s in (await batch.job_states()).items() if s == "complete"}
        await asyncio.sleep(1.2)  # these results too were acknowledged more than a second ago
        before = server.status()
        os.kill(before["pid"], signal.SIGKILL)
        killed_at = time.time()
        states_at_kill = len(done_early)
        assert states_at_kill < n

        # the client rides out the outage (its pool retries) while the worker's watchdog restarts the
        # server, which reloads its AOF; nothing is re-enqueued by hand
        counts = await batch.wait(progress=False, timeout=90)
        after = server.status()
        assert after["running"] and after["pid"] != before["pid"] and after["port"] == before["port"]
        assert counts == {**counts, "complete": n, "failed": 0, "not_found": 0}, counts
        states = await batch.job_states()
        assert all(states[i] == "complete" for i in done_early)

        # the same worker process reconnected and kept working
        assert worker.alive
        df = await batch.results()
        after_kill = df[df["finish_time"] > pd_time(killed_at)]
        assert len(after_kill) > 0
        workers_seen = await client.redis.hkeys("mediaq:claimants")
        assert [w.decode().rsplit(":", 1)[1] for w in workers_seen] == [str(worker.pid)]
        # and the client keeps working too, on the restarted server
        assert await client.result(await client.enqueue_job("noop", "still here"), timeout=30) == "still here"
        print(f"\nredis restart: SIGKILL after {states_at_kill} of {n} jobs; restarted server pid {after['pid']}; "
              f"batch complete {time.time() - killed_at:.1f} s after the kill, 0 lost")
    finally:
        await client.close()


def pd_time(epoch: float):
    import pandas as pd

    return pd.Timestamp(epoch, unit="s", tz="UTC")


async def test_enqueue_interrupted_by_a_dead_server_then_rerun_completes_without_duplicates(embedded):
    settings, server, workers = embedded
    client = await mediaq.connect(settings=settings)
    n, chunk, stop_after = 5000, 1000, 2500

    def items(stop: bool):
        for i in range(n):
            if stop and i == stop_after:
                server.stop()  # SIGTERM: the server flushes its AOF and exits; nothing restarts it
            yield {"value": i}

    try:
        with pytest.raises(mediaq.EnqueueError) as info:
            await client.enqueue_many("noop", items(stop=True), job_id="item{value}", batch="interrupted",
                                      chunk_size=chunk)
        err = info.value
        # chunk 1 landed before the stop. Chunk 2 was in flight while chunk 3 (items 2000-2999) was
        # being built when the server stopped: it landed, or the server ran it and exited before its
        # reply went out, or it never ran. Only the server knows, so the error must say it is in doubt.
        assert err.chunks_written in (1, 2) and err.batch == "interrupted"
        assert err.written == err.chunks_written * chunk
        assert err.in_doubt == chunk  # the connection broke after a chunk was sent: never "not written"
        assert f"{err.chunks_written} chunk(s) ({err.written} jobs)" in str(err)
        assert "written whole or not at all and which is unknown" in str(err)
        landed = err.written

        server.ensure_running()  # the operator brings Redis back; the same port and password
        queued = {m.decode() for m in await client.redis.zrange(settings.queue_name, 0, -1)}
        # whole chunks only, nothing half-written: the chunk in doubt is all there or all missing
        assert queued in ({f"item{i}" for i in range(landed)}, {f"item{i}" for i in range(landed + chunk)})
        landed = len(queued)

        batch = await client.enqueue_many("noop", items(stop=False), job_id="item{value}", batch="interrupted",
                                          chunk_size=chunk)
        assert sorted(batch.skipped) == sorted(f"item{i}" for i in range(landed))  # not written twice
        assert await client.redis.zcard(settings.queue_name) == n
        workers.append(mediaq.LocalWorker(settings.replace(max_jobs=50)).start())
        counts = await batch.wait(progress=False, timeout=90)
        assert counts["complete"] == n and counts["failed"] == 0, counts
        df = await batch.results()
        assert len(df) == n and df["job_id"].is_unique and (df["tries"] == 1).all()
        assert sorted(df["result"]) == list(range(n))  # each item ran exactly once
    finally:
        await client.close()


async def test_client_waits_for_a_restarting_server_then_fails_clearly_if_it_stays_down(embedded):
    """Every pooled connection dropped while the server is down: the next call reconnects once the
    server is back (retried, not failed at once); with the server gone for good it raises."""
    import threading

    from redis.exceptions import ConnectionError as RedisConnectionError

    settings, server, _ = embedded
    client = await mediaq.connect(settings=settings)
    try:
        await client.redis.set("kept", "yes")
        await asyncio.sleep(1.2)  # fsynced by the AOF
        os.kill(server.status()["pid"], signal.SIGKILL)
        await client.redis.connection_pool.disconnect()
        restart = threading.Timer(1.0, server.ensure_running)
        restart.start()
        try:
            assert await client.redis.get("kept") == b"yes"
        finally:
            restart.join()
        server.stop()
        with pytest.raises(RedisConnectionError):
            await client.redis.get("kept")
    finally:
        await client.close()


async def test_a_job_left_marked_running_by_a_crash_runs_again_after_the_restart(embedded):
    """What a crash that loses a result looks like: the job is still queued and marked in progress,
    and no worker runs it. The worker notices the server restarted and frees it (arq alone: 3610 s)."""
    settings, server, workers = embedded
    client = await mediaq.connect(settings=settings)
    try:
        workers.append(mediaq.LocalWorker(settings).start())
        await asyncio.sleep(0.5)  # past the worker's start-up orphan scan
        await client.redis.psetex("arq:in-progress:lost", 3_610_000, b"1")
        await client.enqueue_job("noop", "found", _job_id="lost")
        await asyncio.sleep(2.5)  # several janitor ticks: a live worker's running job is never touched
        assert await client.redis.exists("arq:in-progress:lost") and not await client.redis.exists("arq:result:lost")
        await asyncio.sleep(1.2)  # fsynced
        os.kill(server.status()["pid"], signal.SIGKILL)
        assert await client.result("lost", timeout=60) == "found"
        recoveries = [json.loads(r) for r in await client.redis.lrange("mediaq:recoveries", 0, -1)]
        assert [r["ids"] for r in recoveries if r["reason"] == "orphans"] == [["lost"]]
    finally:
        await client.close()


async def test_worker_outlives_an_outage_longer_than_its_retries(embedded):
    """A server the worker does not own (explicit URL: no watchdog) is down for 16 s, longer than the
    worker's ~11 s of retries: arq's loop would end; the worker keeps polling and resumes."""
    settings, server, workers = embedded
    explicit = settings.replace(redis_url=server.url())
    worker = mediaq.LocalWorker(explicit).start()
    workers.append(worker)
    client = await mediaq.connect(settings=explicit)
    try:
        assert await client.result(await client.enqueue_job("noop", "before"), timeout=30) == "before"
        server.stop()
        await asyncio.sleep(16)
        assert worker.alive, worker.logs(20)
        server.ensure_running()  # same port and password
        assert await client.result(await client.enqueue_job("noop", "after"), timeout=30) == "after"
        assert worker.alive
        assert "Redis failed in the worker loop" in worker.logs(400)
    finally:
        await client.close()


class ResettingProxy:
    """A TCP proxy to a real server that resets the next ``resets`` connections right after accepting
    them (what a client meets when a server is restarting)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.resets = 0
        self.reset_done = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import socket as socket_module
        import struct

        if self.resets > 0:
            self.resets -= 1
            self.reset_done += 1
            await reader.read(1)  # the client's AUTH has been sent
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # RST
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def close(self) -> None:
        self.server.close()


async def test_client_retries_a_connection_reset_during_its_handshake(redis_server, settings):
    proxy = ResettingProxy(redis_server.port)
    port = await proxy.start()
    url = redis_server.url.replace(f":{redis_server.port}", f":{port}")
    client = await mediaq.connect(settings=settings.replace(redis_url=url))
    try:
        await client.redis.set("k", "v")
        await client.redis.connection_pool.disconnect()  # the next call must connect again...
        proxy.resets = 3  # ...and meets three resets during AUTH
        assert await client.redis.get("k") == b"v"
        assert proxy.reset_done == 3
    finally:
        await client.close()
        await proxy.close()
