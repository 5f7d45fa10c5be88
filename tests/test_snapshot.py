"""Queue snapshots against the real server and a real worker, their fixed cost, and the pure formatting."""

from __future__ import annotations

import time

import pytest
from helpers import eventually
from redis.asyncio.connection import AbstractConnection

import mediaq
from mediaq.client.monitor import RateWindow
from mediaq.client.snapshot import BatchCounts, Failure, Snapshot, WorkerInfo, queue_snapshot, throughput_rate
from mediaq.faces.render import format_duration, format_html, format_text, sparkline_svg
from mediaq.runtime import keys
from mediaq.runtime.server import EmbeddedServer


async def test_snapshot_of_a_finished_batch(client, start_worker):
    worker = start_worker()
    items = [{"seconds": 0}] * 10 + [{"seconds": -1}, {"seconds": "x"}]
    batch = await client.enqueue_many("sleep", items, job_id="s{index}", batch="known")
    await batch.wait(progress=False, timeout=60)
    # Workers flush their counters every second and a heartbeat carries `finished`; a snapshot's
    # reads run side by side, so one snapshot can see a flush in one hash and not yet in another.
    # Wait until every figure asserted below has arrived, not for a fixed time.
    def arrived(s: Snapshot) -> bool:
        return bool(s.batches and s.batches[0].finished and len(s.failures) == 2
                    and (s.complete, s.failed) == (10, 2) and sum(c for _, c, _ in s.throughput) == 10
                    and sum(f for _, _, f in s.throughput) == 2 and s.workers and s.workers[0].finished == 12)

    snap = await eventually(lambda: queue_snapshot(client, batch, worker), arrived)
    assert snap.error is None and snap.ok
    (b,) = snap.batches
    assert (b.name, b.function, b.total, b.complete, b.failed, b.pending) == ("known", "sleep", 12, 10, 2, 0)
    assert b.by_function == {"sleep": {"complete": 10, "failed": 2, "aborted": 0}}
    assert snap.by_function == {"sleep": {"complete": 10, "failed": 2, "aborted": 0}}
    assert (snap.complete, snap.failed, snap.queued, snap.deferred) == (10, 2, 0, 0)
    assert {f.job_id for f in snap.failures} == {"s10", "s11"}
    assert {f.short_type for f in snap.failures} == {"ConfigError"}
    assert all("seconds must be a number" in f.message and f.batch == "known" for f in snap.failures)
    assert snap.failures[0].time >= snap.failures[1].time  # newest first
    assert [w.pid for w in snap.workers] == [worker.pid]
    assert snap.workers[0].age < 10 and snap.workers[0].finished == 12
    assert snap.local_worker is not None and snap.local_worker.alive and snap.local_worker.pid == worker.pid
    assert sum(c for _, c, _ in snap.throughput) == 10 and sum(f for _, _, f in snap.throughput) == 2
    seconds = [s for s, _, _ in snap.throughput]
    assert seconds == list(range(seconds[0], seconds[0] + len(seconds)))  # dense, oldest first

    # another batch's failures are not this batch's
    other = await client.enqueue_many("sleep", [{"seconds": -2}], batch="other")
    await other.wait(progress=False, timeout=60)
    snap = await eventually(lambda: queue_snapshot(client, batch), lambda s: s.failed == 3)
    assert {f.job_id for f in snap.failures} == {"s10", "s11"}
    # the whole queue: newest batches first, every failure (the list is flushed beside the counts)
    whole = await eventually(lambda: queue_snapshot(client), lambda s: len(s.failures) == 3)
    assert [x.name for x in whole.batches] == ["other", "known"]
    assert len(whole.failures) == 3 and whole.failures[0].batch == "other"

    worker.stop()
    snap = await queue_snapshot(client, batch, worker)
    assert snap.workers == () and not snap.local_worker.alive


async def test_queued_deferred_and_in_progress(client, start_worker):
    await client.enqueue_many("noop", range(5), batch="now")
    await client.enqueue_many("noop", range(3), batch="later", defer_by=3600)
    snap = await queue_snapshot(client, "now")
    assert (snap.queued, snap.deferred, snap.in_progress) == (5, 3, 0)
    assert snap.batches[0].pending == 5 and snap.batches[0].fraction == 0.0
    await client.redis.delete(client.settings.queue_name)

    slow = await client.enqueue_many("sleep", [{"seconds": 30}] * 3)
    start_worker()
    # running jobs stay in arq's queue until they finish: they count as in progress, not queued
    snap = await eventually(lambda: queue_snapshot(client, slow), lambda s: s.in_progress == 3)
    assert snap.queued == 0 and snap.workers[0].ongoing == 3
    assert await slow.abort() == 3


class _Wire:
    """Counts round trips (packed sends) and command names on every redis.asyncio connection, leaving
    out a new connection's handshake (AUTH, SELECT...), which the pool does once per connection.

    mediaq's pools' connections send through their own fast path (:mod:`mediaq.runtime.connections`),
    which falls back to redis-py's: both are counted, a send once."""

    HANDSHAKE = frozenset({"AUTH", "SELECT", "HELLO", "CLIENT", "PING"})

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from mediaq.runtime.connections import _fast_path_mixin

        self.sends = 0
        self.commands: list[str] = []
        sending: set[int] = set()  # connections inside a counted send (the fast path's fallback is not another)
        for cls in (AbstractConnection, _fast_path_mixin()):
            send = cls.__dict__["send_packed_command"]

            async def counting_send(conn, command, check_health=True, _send=send):
                outer = id(conn) not in sending
                if outer:
                    names = self._names(command)
                    if not set(names) <= self.HANDSHAKE:
                        self.sends += 1
                        self.commands.extend(names)
                    sending.add(id(conn))
                try:
                    return await _send(conn, command, check_health)
                finally:
                    if outer:
                        sending.discard(id(conn))

            monkeypatch.setattr(cls, "send_packed_command", counting_send)

    @staticmethod
    def _names(command) -> list[str]:
        data = command if isinstance(command, bytes) else b"".join(bytes(c) for c in command)
        parts = data.split(b"\r\n")
        # RESP arrays: *<n>, $<len>, NAME, ...; a pipeline is several arrays back to back
        names, i = [], 0
        while i < len(parts) - 2:
            if parts[i].startswith(b"*") and parts[i + 1].startswith(b"$"):
                names.append(parts[i + 2].decode().upper())
                count = int(parts[i][1:])
                i += 1 + 2 * count
            else:
                i += 1
        return names

    async def cost(self, coro) -> tuple[int, list[str]]:
        self.sends, self.commands = 0, []
        await coro
        return self.sends, list(self.commands)


async def _fill(client, n: int, batch: str) -> None:
    """``n`` ids deferred by an hour (so the running worker leaves them alone) in arq's queue and in a
    batch, and ``n`` more held in a paused bulk batch's pending set: ids only, as a snapshot never
    reads job bodies."""
    later = int(time.time() * 1000) + 3_600_000
    held = keys.batch_pending(f"{batch}-bulk")
    for start in range(0, n, 5000):
        ids = {f"f{i}": later for i in range(start, min(n, start + 5000))}
        async with client.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(client.settings.queue_name, ids)
            pipe.zadd(f"mediaq:batch:{batch}:ids", ids)
            pipe.zadd(held, {f"h{i}": i for i in range(start, min(n, start + 5000))})
            await pipe.execute()
    await client.redis.sadd(keys.BULK_PAUSED, held)  # paused: the running worker leaves it alone
    await client.redis.sadd(keys.BULK_ACTIVE, held)
    await client.redis.zadd("mediaq:batches", {batch: time.time()})


async def test_fixed_round_trips_whatever_the_queue_length(client, start_worker, monkeypatch):
    start_worker()
    done = await client.enqueue_many("sleep", [{"seconds": -1}] * 3 + [{"seconds": 0}] * 3)
    await done.wait(progress=False, timeout=60)
    await eventually(lambda: queue_snapshot(client), lambda s: s.workers and s.failed == 3)
    await client.redis.zadd("mediaq:batches", {f"old{i}": 0 for i in range(3)})  # a whole-queue view shows 3
    wire = _Wire(monkeypatch)
    costs, held = {}, 0
    for n in (10, 30_000):
        held += n
        await _fill(client, n, f"big{n}")
        costs[n] = (await wire.cost(queue_snapshot(client, f"big{n}")), await wire.cost(queue_snapshot(client)))
        snap = await queue_snapshot(client, f"big{n}")
        assert (snap.deferred, snap.batches[0].total, snap.failed, len(snap.workers)) == (n, n, 3, 1)
        assert snap.held == held and snap.queued == held  # held bulk jobs count as queued
    (batch_small, whole_small), (batch_big, whole_big) = costs[10], costs[30_000]
    assert batch_small[0] == batch_big[0] <= 10
    assert whole_small[0] == whole_big[0] <= 14
    for _, commands in (batch_big, whole_big):
        # SMEMBERS only of the bulk sets (one member per bulk batch), never of anything per job
        assert not {"KEYS", "SCAN", "ZRANGE", "GET"} & set(commands)
        assert commands.count("SMEMBERS") <= 2
        assert commands.count("MGET") == 1  # the workers' heartbeats


async def test_unreachable_redis_is_an_error_field_not_an_exception(settings, tmp_path):
    server = EmbeddedServer(tmp_path / "own-server")
    url = server.ensure_running()
    client = await mediaq.connect(settings=settings.replace(redis_url=url))
    try:
        assert (await queue_snapshot(client)).error is None
        server.stop()
        snap = await queue_snapshot(client, timeout=1.0)
        assert snap.error is not None and snap.error.startswith("Redis unreachable")
        assert not snap.ok and snap.counts() == dict.fromkeys(snap.counts(), 0)
    finally:
        server.stop()
        await client.close()


# -- pure parts ------------------------------------------------------------------------------------
def _snap(**kw) -> Snapshot:
    base = dict(time=1_000_000.5, queued=4, deferred=1, in_progress=2, complete=90, failed=3,
                by_function={"create_thumbnail": {"complete": 90, "failed": 3}},
                batches=(BatchCounts("thumbs", "create_thumbnail", 100, 90, 3),),
                workers=(WorkerInfo("box", 42, 1.2, 2, 93, 10),),
                failures=(Failure("thumb:<7>", "create_thumbnail", "mediaq.errors.PermanentJobError",
                                  "bad <script>alert(1)</script>", code="corrupt_image", time=999_999.0),),
                throughput=tuple((s, 3, s % 2) for s in range(999_900, 1_000_001)))
    return Snapshot(**{**base, **kw})


def test_text_and_html_formatting():
    snap = _snap()
    text = format_text(snap, {"thumbs": (2.0, 3.5)})
    assert "4 queued, 1 deferred, 2 in progress, 90 complete, 3 failed" in text
    assert "93/100 done (93.0%) · 3 failed · 2.0 jobs/s · ETA 4 s" in text
    assert "box:42 (2 running" in text and "PermanentJobError: bad <script>" in text
    page = format_html(snap)
    assert "<script>" not in page and "&lt;script&gt;" in page and "thumb:&lt;7&gt;" in page
    assert "corrupt_image" in page and "7 pending" in page and "mediaq-sparkline" in page
    error = format_html(Snapshot(time=1.0, error="Redis unreachable: <refused>"))
    assert "Redis unreachable: &lt;refused&gt;" in error and "no live workers" in error


def test_sparkline_scales_to_the_peak():
    svg = sparkline_svg(((1, 0, 0), (2, 10, 5), (3, 5, 0)), width=100, height=54)
    green, red = svg.split("<polyline")[1:]
    # the plot is inset for its axes: x from 28 to 96, y from 4 (the peak) to 40 (zero)
    assert 'points="28.0,40.0 62.0,4.0 96.0,22.0"' in green  # 10 is the top, 0 the bottom
    assert 'points="28.0,40.0 62.0,22.0 96.0,40.0"' in red
    assert "peak 10/s" in svg
    assert '<line x1="28" y1="4" x2="28" y2="40"' in svg and '<line x1="28" y1="40" x2="96" y2="40"' in svg
    assert all(f">{label}</text>" in svg for label in ("10", "0", "-3 s", "now"))  # axis labels
    assert "<polyline" not in sparkline_svg(())


def test_rates_and_eta():
    # flush lag: the current second (1_000_001) and the one before are still filling: left out
    tp = ((999_990, 0, 0), (999_995, 4, 0), (999_996, 2, 2), (999_999, 4, 0), (1_000_000, 50, 0))
    assert throughput_rate(tp, now=1_000_001.9, window=30) == pytest.approx(12 / 5)  # since the first busy second
    assert throughput_rate(tp, now=1_000_001.9, window=4) == pytest.approx(8 / 4)  # the last 4 whole seconds
    assert throughput_rate((), now=5.0) == 0.0
    w = RateWindow(window=10)
    assert w.rate() is None and w.eta(5) is None and w.eta(0) == 0.0
    for t in range(0, 30):
        w.update(float(t), 2 * t)
    assert w.rate() == pytest.approx(2.0) and w.eta(10) == pytest.approx(5.0)
    assert w.samples[0][0] >= 30 - 1 - 10  # old samples are dropped
    w.update(30.0, 3)  # the count went back (a retry): the window starts over
    assert w.rate() is None
    assert [format_duration(s) for s in (None, 59.4, 61, 7322)] == ["?", "59 s", "1:01", "2:02:02"]


async def test_workers_table_is_live_whatever_the_health_check_interval(client, start_worker):
    """Running and finished come from each worker's heartbeat, written every second (not every
    health-check interval), and finished counts every result written, aborted-before-start jobs too."""
    worker = start_worker(health_check_interval=60)
    batch = await client.enqueue_many("sleep", [{"seconds": 0}] * 5)
    await batch.wait(progress=False, timeout=60)
    snap = await eventually(lambda: queue_snapshot(client), lambda s: s.workers and s.workers[0].finished == 5,
                            timeout=20, what="the heartbeat's finished count")
    assert [w.pid for w in snap.workers] == [worker.pid]
    slow = await client.enqueue_many("sleep", [{"seconds": 30}] * 23, batch="cut")  # 10 run, 13 wait
    await eventually(lambda: queue_snapshot(client), lambda s: s.workers[0].ongoing >= 1, timeout=20,
                     what="a running job in the heartbeat")
    await slow.abort()
    counts = await slow.wait(progress=False, timeout=60)
    assert counts["aborted"] == 23, counts
    await eventually(lambda: queue_snapshot(client), lambda s: s.workers[0].finished == 5 + 23 and
                     s.workers[0].ongoing == 0, timeout=20, what="aborted jobs counted as finished")
