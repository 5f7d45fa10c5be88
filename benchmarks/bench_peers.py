"""mediaq beside the other Python job queues (issue 17): arq, rq, saq, dramatiq and Celery, on the
same embedded server, each on its own Redis database (flushed before and after each run): no-op
jobs (the queue's own cost is all there is), then thumbnails (the job's work dominates).

- **enqueue**: 100k no-op jobs (``--quick``: 10k), each library's bulk path as its documentation
  gives it: mediaq ``client.enqueue_many("noop", range(n))``; arq ``enqueue_job`` gathered 1,000
  at a time; rq ``Queue.enqueue_many`` of ``Queue.prepare_data`` records (one pipeline); saq
  ``queue.enqueue`` gathered (it has no bulk call); dramatiq ``group(...).run()``; Celery
  ``group(...).apply_async()``. Timed: the library's calls alone (connections made before).
- **worker**: 20k queued no-op jobs (``--quick``: 5k), then one worker process starts; timed from
  its start (startup included: a real batch pays it too) until every job is done, polled every
  50 ms (first a cheap queued count, then the library's own record of done jobs: mediaq
  ``batch.status()``, arq and Celery result keys, rq's finished registry, saq's incomplete set,
  dramatiq's unacknowledged messages). mediaq: ``ctx.start_worker()`` defaults (``max_jobs`` 10,
  ``poll_delay`` 0.05); stock arq with the same two settings; saq ``concurrency`` 10; dramatiq 1
  process x 10 threads; Celery prefork (2 processes, one per core) and threads (10); rq
  ``SimpleWorker``. Every worker keeps its CLI's default logging, into a file. Every library stores
  its results (dramatiq's ``Results`` middleware is turned on for it).
- **thumbnails**: the same one-worker drain with real work, 1,000 thumbnails (``--quick``: 120) of
  the sample images in ``data/`` fitted within 250x200: mediaq's ``create_thumbnail`` (its worker
  renders in a pool of one process per core) against the same pure function
  (:func:`benchmarks.peers.render_thumbnail`) in each peer's job, run the way each documents for
  such work: arq in a ``ProcessPoolExecutor`` per core, saq and dramatiq in their threads, Celery
  in its prefork processes or threads, rq one at a time. Every run checks that its ``n`` files exist.

The machine is shared and has 2 cores, so mediaq runs again between every two peers (``M P1 M P2
M ...``) and each row's mediaq figure is the mean of the mediaq runs just before and after that
peer. stderr gets, per worker run, the time to the first job taken, the rate after it, the worker's
CPU time per job (its whole process tree) and the server's commands and CPU time per job: where
each library spends its time. A library that is not installed (``pip install 'mediaq[peers]'``)
or fails here is skipped with the reason on stderr; no row stands in for it.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import redis

import mediaq
from benchmarks._harness import BenchContext, cpu_seconds, row
from mediaq.runtime.connections import with_db
from mediaq.runtime.server import resolve_redis_url

#: (module in benchmarks/peers, class, how its enqueue is spelled in the table); each on its own db.
PEERS = [
    ("arq_stock", "ArqPeer", "enqueue_job gathered"),
    ("rq_jobs", "RqPeer", "enqueue_many"),
    ("saq_app", "SaqPeer", "enqueue gathered"),
    ("dramatiq_app", "DramatiqPeer", "group().run()"),
    ("celery_app", "CeleryPeer", "group().apply_async()"),
    ("celery_app", "CeleryThreadsPeer", None),  # same enqueue as above: measured once
]
POLL = 0.05  # s between two looks at the counters
DATA = Path(__file__).resolve().parents[1] / "data"
_RUNS = itertools.count()  # one storage folder per thumbnail run


class MediaqSide:
    """mediaq through the same three calls as a peer: ``enqueue``, ``queued``, ``done``."""

    name = "mediaq"

    def __init__(self, ctx: BenchContext) -> None:
        self.ctx = ctx
        self.client = mediaq.connect_sync(settings=ctx.settings)
        url = with_db(resolve_redis_url(ctx.settings), ctx.settings.queue_db, keep_explicit=False)
        self.redis = redis.Redis.from_url(url)
        self.batch: Any = None

    def enqueue(self, n: int) -> float:
        start = time.perf_counter()
        self.batch = self.client.enqueue_many("noop", range(n))
        return time.perf_counter() - start

    def enqueue_thumbnails(self, items: list[dict[str, str]]) -> None:
        self.batch = self.client.enqueue_many("create_thumbnail", [(kw["image_id"], kw["source"]) for kw in items])

    def queued(self) -> int:
        return self.redis.zcard(self.ctx.settings.queue_name)

    def done(self) -> int:
        return self.batch.status()["complete"]

    def flush(self) -> None:
        self.ctx.flush()

    def close(self) -> None:
        self.client.close()
        self.redis.close()


def run(ctx: BenchContext) -> list[dict]:
    n_enqueue = 10_000 if ctx.quick else 100_000
    n_worker = 5_000 if ctx.quick else 20_000
    n_thumbs = 120 if ctx.quick else 1000
    side = MediaqSide(ctx)
    peers = _load_peers(ctx)
    info = redis.Redis.from_url(resolve_redis_url(ctx.settings))
    rows: list[dict] = []
    try:
        k = f"{n_enqueue // 1000}k"
        for peer, label, mq, rate in _interleaved(side, [(p, lb) for p, lb in peers if lb],
                                                  lambda s: _enqueue_rate(s, n_enqueue)):
            rows.append(row(f"enqueue {k} no-op jobs", mq, rate, "jobs/s", baseline_name=f"{peer.name} {label}"))
        k = f"{n_worker // 1000}k"
        for peer, _, mq, rate in _interleaved(side, peers, lambda s: _worker_rate(ctx, s, n_worker, info)):
            rows.append(row(f"worker, {k} no-op jobs, one process", mq, rate, "jobs/s",
                            baseline_name=f"{peer.name} {peer.worker_label}"))
        for peer, _, mq, rate in _interleaved(side, peers,
                                              lambda s: _worker_rate(ctx, s, n_thumbs, info, thumbs=True)):
            rows.append(row(f"worker, {n_thumbs} thumbnails 250x200, one process", mq, rate, "jobs/s",
                            baseline_name=f"{peer.name} {peer.worker_label}{peer.thumb_label}"))
    finally:
        for peer, _ in peers:
            with contextlib.suppress(Exception):
                peer.flush()
            peer.close()
        side.close()
        info.close()
    return rows


def _load_peers(ctx: BenchContext) -> list[tuple[Any, str | None]]:
    """Each installed peer on a database of its own (neither mediaq's queue nor its cache db)."""
    dbs = iter(d for d in range(2, 16) if d not in (ctx.settings.queue_db, ctx.settings.cache_db))
    base = resolve_redis_url(ctx.settings)
    peers = []
    for module, cls, label in PEERS:
        url = with_db(base, next(dbs), keep_explicit=False)
        os.environ["BENCH_PEERS_REDIS_URL"] = url  # read by the module at import (Celery, dramatiq apps)
        try:
            mod = importlib.import_module(f"benchmarks.peers.{module}")
        except ImportError as e:
            print(f"# skip {module}: {e} (pip install 'mediaq[peers]')", file=sys.stderr, flush=True)
            continue
        peer = getattr(mod, cls)(mod.URL)  # the db of its first import (Celery's two pools share one)
        peer.flush()
        peers.append((peer, label))
    return peers


def _interleaved(side: MediaqSide, peers: list[tuple[Any, str | None]],
                 measure: Callable[[Any], float]) -> Iterator[tuple[Any, str | None, float, float]]:
    """``M P1 M P2 M ...``: yields (peer, label, mean of the mediaq runs around it, peer's figure)."""
    before = measure(side)
    for peer, label in peers:
        try:
            rate = measure(peer)
        except Exception:
            print(f"# skip {peer.name} {peer.worker_label}: it failed here:", file=sys.stderr, flush=True)
            traceback.print_exc()
            continue
        after = measure(side)
        yield peer, label, statistics.mean((before, after)), rate
        before = after


def _enqueue_rate(side: Any, n: int) -> float:
    side.flush()
    try:
        seconds = side.enqueue(n)
    finally:
        side.flush()
    print(f"# enqueue {side.name}: {n} jobs in {seconds:.2f} s = {n / seconds:.0f} jobs/s", file=sys.stderr,
          flush=True)
    return n / seconds


def _worker_rate(ctx: BenchContext, side: Any, n: int, info: redis.Redis, *, thumbs: bool = False) -> float:
    """Queue ``n`` jobs (no-op, or thumbnails into a fresh storage folder), start one worker, time it
    until all are done; returns jobs/s."""
    side.flush()
    storage = ctx.tmp / f"thumbs-{next(_RUNS)}" if thumbs else None
    try:
        if storage is None:
            side.enqueue(n)
        else:
            side.enqueue_thumbnails(_thumb_items(n, storage))
        assert side.queued() == n, (side.queued(), n)
        log = ctx.tmp / f"worker-{side.name.replace(' ', '-')}-{getattr(side, 'worker_label', '')[:7]}.log"
        before = _server_counters(info)
        start = time.perf_counter()
        starter = _mediaq_worker(ctx, storage) if isinstance(side, MediaqSide) else _peer_worker(side, log)
        with starter as proc:
            first, elapsed = _wait_done(side, n, proc, start, limit=max(120.0, n / 20 if storage is None else n))
            cpu = cpu_seconds([proc.pid], children=True)
        after = _server_counters(info)
    finally:
        side.flush()
    if storage is not None:
        made = len(list((storage / "thumbs").glob("*.jpg")))
        if made != n:
            raise RuntimeError(f"{side.name}: {made} thumbnails written for {n} jobs (see {storage})")
    what = "thumbnails" if thumbs else "worker"
    print(f"# {what} {side.name} {getattr(side, 'worker_label', '')}: {n} jobs in {elapsed:.2f} s = "
          f"{n / elapsed:.0f} jobs/s; first job taken after {first:.2f} s, then {n / (elapsed - first):.0f} jobs/s; "
          f"worker CPU {cpu / n * 1e3:.2f} ms/job; server {(after[0] - before[0]) / n:.1f} commands/job, "
          f"CPU {(after[1] - before[1]) / n * 1e3:.3f} ms/job", file=sys.stderr, flush=True)
    return n / elapsed


def _wait_done(side: Any, n: int, proc: psutil.Process, start: float, limit: float) -> tuple[float, float]:
    """(seconds to the first job taken, seconds to the last job done), both from ``start``."""
    first = None
    while time.perf_counter() - start < limit:  # bounded: the worker has ``limit`` seconds in all
        queued = side.queued()
        if first is None and queued < n:
            first = time.perf_counter() - start
        if queued == 0 and side.done() >= n:
            return first or 0.0, time.perf_counter() - start
        if not _alive(proc):
            raise RuntimeError(f"the worker exited with {queued} jobs queued")
        time.sleep(POLL)
    raise TimeoutError(f"{side.name}: {side.done()}/{n} jobs done after {limit:.0f} s")


def _thumb_items(n: int, storage: Path) -> list[dict[str, str]]:
    sources = sorted(str(p) for p in DATA.iterdir() if p.suffix in {".jpg", ".png"})
    return [{"image_id": f"t{i}", "source": sources[i % len(sources)], "storage": str(storage)} for i in range(n)]


@contextlib.contextmanager
def _mediaq_worker(ctx: BenchContext, storage: Path | None = None) -> Iterator[psutil.Process]:
    with ctx.start_worker(**({"storage": str(storage)} if storage else {})) as worker:
        yield psutil.Process(worker.pid)


@contextlib.contextmanager
def _peer_worker(peer: Any, log_path: Any) -> Iterator[psutil.Process]:
    from benchmarks.peers import ROOT

    with open(log_path, "ab") as log:
        proc = subprocess.Popen(peer.worker_cmd(), env=peer.env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield psutil.Process(proc.pid)
    except Exception:
        print(f"# {peer.name} worker log ({log_path}), last lines:\n"
              + "\n".join(log_path.read_text(errors="replace").splitlines()[-15:]), file=sys.stderr, flush=True)
        raise
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM to the worker's process group (Celery's pool, dramatiq's forks), then SIGKILL."""
    import signal

    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            print(f"# worker {proc.pid} still running after {wait:.0f} s: {sig.name} did not stop it",
                  file=sys.stderr, flush=True)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _server_counters(info: redis.Redis) -> tuple[int, float]:
    """(commands processed, CPU seconds) of the server so far."""
    stats, cpu = info.info("stats"), info.info("cpu")
    return stats["total_commands_processed"], cpu["used_cpu_user"] + cpu["used_cpu_sys"]
