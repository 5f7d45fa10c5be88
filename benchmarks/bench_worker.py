"""Where a small job's time goes (issue 17): one mediaq worker against one stock arq worker.

20,000 queued no-op jobs (``--quick``: 5,000) through one worker process, with the same ``max_jobs``
(10) and ``poll_delay`` (0.05 s) on the same embedded server: mediaq's ``arq mediaq.worker.WorkerSettings``
(a :class:`~mediaq.runtime.localworker.LocalWorker`, its own serializer) and a stock arq worker
(``benchmarks/_stock_worker.py``, pickle), two runs each, interleaved (mediaq, arq, arq, mediaq), means.

One run: the worker starts with one probe job queued; once the probe has run, the counters are read,
N job records are written (pipelined ``PSETEX``) and made due at once by one ``ZADD``, and the run ends
when the queue is empty. Figures:

- **jobs/s**: N / (queue empty - ``ZADD``);
- **server commands per job**: the ``INFO commandstats`` delta over the run, less the benchmark's own
  commands (it counts them), / N; by command name on stderr and in the table;
- **worker CPU per job**: the worker process's ``utime + stime`` delta (``/proc/<pid>/stat``) / N
  (the main process: a no-op job never reaches the process pool);
- **main-process RSS** after the run (``/proc/<pid>/status`` VmRSS);
- **start-up**: process start to the probe job's start (arq's ``st`` in its result).

The stderr notes also say which of pandas, numpy and Pillow the worker's main process has loaded
(shared objects in ``/proc/<pid>/maps``).
"""

from __future__ import annotations

import collections
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from benchmarks._harness import BenchContext, row
from mediaq.runtime.connections import with_db
from mediaq.runtime.serialization import get_serializer
from mediaq.runtime.server import resolve_redis_url

ROOT = Path(__file__).resolve().parents[1]
MAX_JOBS = 10
POLL_DELAY = 0.05
CHUNK = 2000
HEAVY = ("pandas", "numpy", "PIL")


def run(ctx: BenchContext) -> list[dict]:
    n = 5_000 if ctx.quick else 20_000
    results: dict[str, list[dict[str, Any]]] = {"mediaq": [], "arq": []}
    for kind in ("mediaq", "arq", "arq", "mediaq"):  # interleaved: the machine's drift hits both
        ctx.flush()
        out = _one_run(ctx, kind, n)
        results[kind].append(out)
        print(f"# {kind}: {n} no-op jobs at {out['rate']:.0f} jobs/s, {out['commands']:.2f} commands/job, "
              f"{out['cpu_ms']:.3f} ms CPU/job, RSS {out['rss_mb']:.1f} MB, first job after {out['startup']:.2f} s; "
              f"loaded: {', '.join(out['heavy']) or 'none of ' + '/'.join(HEAVY)}", file=sys.stderr, flush=True)
    m, a = _mean(results["mediaq"]), _mean(results["arq"])
    names = sorted(set(m["by_command"]) | set(a["by_command"]),
                   key=lambda c: -(m["by_command"].get(c, 0) + a["by_command"].get(c, 0)))
    print("# server commands per job, by command (mediaq / arq):", file=sys.stderr)
    for name in names:
        print(f"#   {name:<18} {m['by_command'].get(name, 0):7.3f} {a['by_command'].get(name, 0):7.3f}",
              file=sys.stderr)
    k = f"{n // 1000}k"
    base = "stock arq 0.28 worker"
    rows = [
        row(f"{k} no-op jobs, one worker (max_jobs {MAX_JOBS}, poll_delay {POLL_DELAY})", m["rate"], a["rate"],
            "jobs/s", baseline_name=base),
        row("server commands per job", m["commands"], a["commands"], "commands", higher_is_better=False,
            baseline_name=base),
        row("worker CPU per job (main process)", m["cpu_ms"], a["cpu_ms"], "ms", higher_is_better=False,
            baseline_name=base),
        row("worker main-process RSS after the run", m["rss_mb"], a["rss_mb"], "MB", higher_is_better=False,
            baseline_name=base),
        row("worker start-up: process start to first job started", m["startup"], a["startup"], "s",
            higher_is_better=False, baseline_name=base),
    ]
    for name in names:  # the commands that make up the difference
        mine, theirs = m["by_command"].get(name, 0.0), a["by_command"].get(name, 0.0)
        if max(mine, theirs) >= 0.01:
            rows.append(row(f"  commands per job: {name}", mine, theirs, "commands", higher_is_better=False,
                            baseline_name=base))
    return rows


def _mean(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {key: statistics.mean(r[key] for r in runs) for key in ("rate", "commands", "cpu_ms", "rss_mb", "startup")}
    names = {c for r in runs for c in r["by_command"]}
    out["by_command"] = {c: statistics.mean(r["by_command"].get(c, 0.0) for r in runs) for c in names}
    return out


class _Counted:
    """The benchmark's own connection, counting what it sends (subtracted from the server's counts)."""

    def __init__(self, url: str) -> None:
        self.r = redis.Redis.from_url(url, single_connection_client=True)
        self.r.ping()  # connect (and its handshake) before the first reading
        self.sent: collections.Counter[str] = collections.Counter()

    def commandstats(self) -> dict[str, int]:
        stats = self.r.info("commandstats")
        self.sent["info"] += 1
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    def close(self) -> None:
        self.r.close()


def _one_run(ctx: BenchContext, kind: str, n: int) -> dict[str, Any]:
    settings = ctx.settings
    url = resolve_redis_url(settings)
    queue = settings.queue_name
    dumps = get_serializer(settings.serializer)[0] if kind == "mediaq" else _pickle_dumps
    loads = get_serializer(settings.serializer)[1] if kind == "mediaq" else _pickle_loads
    bench = _Counted(with_db(url, settings.queue_db, keep_explicit=False))
    now = int(time.time() * 1000)
    bench.r.psetex("arq:job:probe", 86_400_000, dumps({"t": None, "f": "noop", "a": [], "k": {}, "et": now}))
    bench.r.zadd(queue, {"probe": now})
    started = time.time()
    proc, stop = _start(ctx, kind, url)
    try:
        pid = proc.pid
        while (raw := bench.r.get("arq:result:probe")) is None:
            if proc.poll() is not None:
                raise RuntimeError(f"the {kind} worker exited with code {proc.returncode}")
            time.sleep(0.01)
        startup = loads(raw)["st"] / 1000 - started
        time.sleep(0.3)  # let start-up work (janitor's first scan, first flushes) settle
        cpu0, cs0 = _cpu(pid), bench.commandstats()
        now = int(time.time() * 1000)
        for start in range(0, n, CHUNK):
            with bench.r.pipeline(transaction=False) as pipe:
                for i in range(start, min(start + CHUNK, n)):
                    pipe.psetex(f"arq:job:j{i}", 86_400_000,
                                dumps({"t": None, "f": "noop", "a": [i], "k": {}, "et": now}))
                pipe.execute()
            bench.sent["psetex"] += min(start + CHUNK, n) - start
        members = {f"j{i}": now + i // 1000 - n // 1000 for i in range(n)}  # all due, in order
        due = time.monotonic()
        bench.r.zadd(queue, members)
        bench.sent["zadd"] += 1
        while True:
            bench.sent["zcard"] += 1
            if bench.r.zcard(queue) == 0:
                break
            time.sleep(0.01)
        elapsed = time.monotonic() - due
        cpu1, cs1 = _cpu(pid), bench.commandstats()
        by_command = {}
        for name in set(cs1) | set(cs0):  # `info`: cs0's own call is in cs1, cs1's is not; both are in `sent`
            calls = cs1.get(name, 0) - cs0.get(name, 0) - bench.sent.get(name, 0) + (1 if name == "info" else 0)
            if calls:
                by_command[name] = calls / n
        heavy = _loaded(pid)
        return {"rate": n / elapsed, "commands": sum(by_command.values()), "by_command": by_command,
                "cpu_ms": (cpu1 - cpu0) * 1000 / n, "rss_mb": _rss_mb(pid), "startup": startup, "heavy": heavy}
    finally:
        stop()
        bench.close()


def _start(ctx: BenchContext, kind: str, url: str) -> tuple[Any, Any]:
    settings = ctx.settings
    if kind == "mediaq":
        from mediaq.runtime.localworker import LocalWorker

        worker = LocalWorker(settings.replace(max_jobs=MAX_JOBS, poll_delay=POLL_DELAY))
        worker.start()
        return worker._proc, worker.stop
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDIAQ_", "STOCK_"))}
    env.update(STOCK_REDIS_URL=url, STOCK_QUEUE_DB=str(settings.queue_db), STOCK_QUEUE_NAME=settings.queue_name,
               STOCK_MAX_JOBS=str(MAX_JOBS), STOCK_POLL_DELAY=str(POLL_DELAY),
               STOCK_KEEP_RESULT=str(settings.keep_result),
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p))
    log = open(ctx.tmp / "stock-worker.log", "ab")  # closed by stop()
    proc = subprocess.Popen([sys.executable, "-m", "arq", "benchmarks._stock_worker.WorkerSettings"], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()

    return proc, stop


def _pickle_dumps(value: Any) -> bytes:
    import pickle

    return pickle.dumps(value)


def _pickle_loads(data: bytes) -> Any:
    import pickle

    return pickle.loads(data)  # our own records on our own throwaway server


def _cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _loaded(pid: int) -> list[str]:
    """Which of pandas, numpy, PIL have shared objects mapped into process ``pid``."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [name for name in HEAVY if f"/site-packages/{name}/" in maps]
