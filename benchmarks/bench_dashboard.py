"""Dashboard refresh cost against queue length (issue 7): at most 50 ms median with 1M queued jobs, and
not more than 2x its cost with 1k queued. The browser tab (issue 16, ``mediaq dashboard``): the cost of
one refresh in the tab's kernel (snapshot plus redrawing the widgets the page shows, as the page's header
reports it) with the same queue, and the time from opening the page to the first numbers, in headless
Chromium (Debian's ``chromium``; rows skipped with the reason when it or Voilà is missing).

The queue and the batch are filled with pipelined ``ZADD`` of ids only (a refresh never reads job
bodies), next to realistic fixed-size state: 4 worker heartbeats, 50 failures, per-second counters
over the whole chart window, stats for 4 functions. Measured: ``Dashboard.refresh()`` (snapshot and
widget update, no front end attached) for one batch and for the whole queue. For scale, the exact
per-job answer (``batch.status()``) over the same batch at the middle size.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

import mediaq
from benchmarks._harness import BenchContext, row
from mediaq.faces.widgets import Dashboard
from mediaq.runtime import keys


async def _seed(client: mediaq.Client, batch: str) -> None:
    """Fixed-size state a busy queue has, written as workers write it."""
    redis, now = client.redis, time.time()
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(4):
            key = keys.heartbeat("bench-host", 1000 + i)
            pipe.set(key, json.dumps({"host": "bench-host", "pid": 1000 + i, "started": now - 60, "last": now,
                                      "ongoing": 10, "finished": 5000, "max_jobs": 10, "processes": 2}), ex=3600)
            pipe.zadd(keys.WORKERS, {key: now})
        for fn in ("create_thumbnail", "create_variant", "add_to_iqdb", "recalculate_rating"):
            pipe.hset(keys.STATS, mapping={f"{fn}:complete": 100_000, f"{fn}:failed": 50})
        for i in range(50):
            pipe.lpush(keys.FAILURES, json.dumps({
                "job_id": f"thumb:{i}", "function": "create_thumbnail", "time": now - i, "batch": batch,
                "type": "mediaq.errors.PermanentJobError", "code": "corrupt_image",
                "message": "cannot identify image file"}))
        for second in range(int(now) - 130, int(now) + 1):
            key = keys.throughput(second)
            pipe.hset(key, mapping={f"{second}:complete": 40, f"{second}:failed": 1})
            pipe.expire(key, 3600)
        await pipe.execute()


async def _fill(client: mediaq.Client, batch: str, n: int) -> float:
    """``n`` ids due now in the client's queue and in ``batch``'s id set; returns ids/s."""
    t = time.perf_counter()
    now = int(time.time() * 1000)
    queue = client.settings.queue_name
    await client.redis.hset(f"mediaq:batch:{batch}", mapping={"function": "create_thumbnail", "created": time.time()})
    await client.redis.hset(f"mediaq:batch:{batch}:counts", mapping={"complete": 5000, "failed": 50,
                                                                     "create_thumbnail:complete": 5000,
                                                                     "create_thumbnail:failed": 50})
    for start in range(0, n, 100_000):
        async with client.redis.pipeline(transaction=False) as pipe:
            for chunk in range(start, min(n, start + 100_000), 5000):
                ids = {f"{batch}:{i}": now for i in range(chunk, min(n, chunk + 5000))}
                pipe.zadd(queue, ids)
                pipe.zadd(f"mediaq:batch:{batch}:ids", ids)
            await pipe.execute()
    return n / (time.perf_counter() - t)


async def _interleaved_medians(fns: list, runs: int) -> list[float]:
    """Median ms of each function, run in turn so that machine load hits them alike."""
    for fn in fns * 3:  # warm the connection pools
        await fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            await fn()
            times[i].append(time.perf_counter() - t)
    return [1000 * statistics.median(t) for t in times]


async def _bench(ctx: BenchContext) -> list[dict]:
    small, mid, big = (1_000, 100_000, 1_000_000) if not ctx.quick else (1_000, 20_000, 200_000)
    runs = 30 if ctx.quick else 100
    label = {1_000: "1k", 20_000: "20k", 100_000: "100k", 200_000: "200k", 1_000_000: "1M"}
    # one queue (and batch) per size, each on its own client, so the sizes are measured side by side
    clients = {n: await mediaq.connect(settings=ctx.settings.replace(queue_name=f"bench:queue:{label[n]}"))
               for n in (small, mid, big)}
    rows = []
    try:
        await _seed(clients[big], f"b{label[big]}")
        fill_rate = 0.0
        for n, client in clients.items():
            fill_rate = await _fill(client, f"b{label[n]}", n)
        dashes = {n: (Dashboard(c, f"b{label[n]}", autostart=False), Dashboard(c, autostart=False))
                  for n, c in clients.items()}
        for n, (batch_dash, _) in dashes.items():
            snap = await batch_dash.refresh()
            assert snap.error is None and snap.queued == n - snap.in_progress, snap
            assert snap.batches[0].total == n and snap.batches[0].name == f"b{label[n]}", snap.batches
        fns = [d.refresh for n in (small, big) for d in dashes[n]]
        batch_small, queue_small, batch_big, queue_big = await _interleaved_medians(fns, runs)
        t = time.perf_counter()
        await clients[mid].batch(f"b{label[mid]}").status()
        status_ms = 1000 * (time.perf_counter() - t)
        (mid_ms,) = await _interleaved_medians([dashes[mid][0].refresh], runs)
        for what, s_ms, b_ms in (("batch dashboard", batch_small, batch_big),
                                 ("whole-queue dashboard", queue_small, queue_big)):
            rows.append(row(f"{what} refresh, {label[big]} queued (median of {runs})", b_ms, 50.0, "ms",
                            higher_is_better=False, baseline_name="target 50 ms"))
            rows.append(row(f"{what} refresh, {label[big]} vs {label[small]} queued", b_ms, s_ms, "ms",
                            higher_is_better=False,
                            baseline_name=f"same, {label[small]} queued (target ratio >= 0.5)"))
        rows.append(row(f"batch dashboard refresh vs exact batch.status(), {label[mid]} queued", mid_ms,
                        status_ms, "ms", higher_is_better=False, baseline_name="batch.status() (per-job states)"))
        print(f"# queues filled with pipelined ZADD of ids at {fill_rate:,.0f} ids/s", file=sys.stderr, flush=True)
        for dash_pair in dashes.values():
            for d in dash_pair:
                await d.aclose()
    finally:
        for client in clients.values():
            await client.close()
    return rows


def _web(ctx: BenchContext, queued: int, refreshes: int) -> list[dict]:
    """``mediaq dashboard`` on a queue of ``queued`` jobs, opened in Chromium."""
    import os
    import re
    import secrets
    import shutil
    import signal
    import socket
    import subprocess
    import sys

    chromium = shutil.which("chromium")
    try:
        import voila  # noqa: F401
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        print(f"# web view rows skipped: {exc}", flush=True)
        return []
    if not chromium:
        print("# web view rows skipped: no chromium (apt-get install chromium)", flush=True)
        return []
    ctx.flush()

    async def fill() -> None:
        async with await mediaq.connect(settings=ctx.settings) as client:
            await _fill(client, "bweb", queued)

    asyncio.run(fill())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDIAQ_", "JUPYTER"))}
    env.update(ctx.settings.to_env())
    for name in ("JUPYTER_RUNTIME_DIR", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "IPYTHONDIR"):
        env[name] = str(ctx.tmp / "web" / name.lower())
    log = ctx.tmp / "web.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mediaq.faces.cli", "dashboard", f"--port={port}",
                                 f"--token={token}", "--interval=1"], stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Kernel pool of webview.ipynb is filled" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mediaq dashboard did not start:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        time.sleep(3)  # let the pre-heated kernel finish running the notebook, as it has long before a person looks
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox",
                                                                          "--disable-gpu"])
            try:
                page = browser.new_page()
                t = time.perf_counter()
                page.goto(f"http://127.0.0.1:{port}/?token={token}")
                page.wait_for_function(f"document.body.innerText.includes('{queued}')", timeout=120_000,
                                       polling=20)
                first_s = time.perf_counter() - t
                costs: list[float] = []
                seen = None
                deadline = time.monotonic() + 10 * refreshes
                while len(costs) < refreshes and time.monotonic() < deadline:
                    header = page.locator(".mediaq-updated").first.evaluate("e => e.outerHTML")
                    m = re.search(r'data-refresh-ms="([0-9.]+)"', header)
                    if m and header != seen:
                        seen = header
                        costs.append(float(m.group(1)))
                    time.sleep(0.1)
            finally:
                browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    label = f"{queued // 1000}k" if queued < 1_000_000 else f"{queued // 1_000_000}M"
    return [
        row(f"web view (mediaq dashboard): open page to first numbers, {label} queued", first_s, 5.0, "s",
            higher_is_better=False, baseline_name="target 5 s"),
        row(f"web view refresh in the tab's kernel (snapshot + widgets), {label} queued (median of {len(costs)})",
            statistics.median(costs), 50.0, "ms", higher_is_better=False, baseline_name="target 50 ms"),
    ]


def run(ctx: BenchContext) -> list[dict]:
    rows = asyncio.run(_bench(ctx))
    return rows + _web(ctx, 200_000 if ctx.quick else 1_000_000, 10 if ctx.quick else 30)
