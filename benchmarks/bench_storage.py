"""Storage by URL (issue 15), measured in one run against one S3 API on loopback (moto's server).

1. The library: obstore (chosen) against fsspec/s3fs (the pandas/dask convention) on the same objects:
   requests per second and client CPU per request for GET, ranged GET (the header read) and PUT of
   thumbnail-sized objects, one request at a time, rounds interleaved.
2. Thumbnails from and to S3 against the same photos on local disk, one worker with 2 pool
   processes, interleaved; and where an S3 thumbnail's time goes (transfer, decode+encode, upload),
   timed step by step in one process.
3. Adding a host adds its cores: two workers with one pool process each against one worker with two,
   on local files (no S3 server competing for the cores), target >= 0.9x.
4. Listing a prefix of many objects into ``image_frame`` against a plain ``s3fs`` ``find``.

moto's server is Python and runs on the same two cores as the workers, so S3 figures here are a
pessimistic bound for a real object store, which serves from other machines.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import mediaq
from benchmarks._harness import BenchContext, row
from mediaq.pure import imaging

DATA = Path(__file__).resolve().parents[1] / "data"
TESTS = Path(__file__).resolve().parents[1] / "tests"
BOX = (250, 200)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _photos(ctx: BenchContext, n: int) -> list[Path]:
    spec = importlib.util.spec_from_file_location("generate_images", DATA / "generate_images.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)  # type: ignore[union-attr]
    return list(gen.write_photos(ctx.tmp / "photos", n, (3000, 2000), seed=0, quality=90))


# -- 1. obstore against s3fs -------------------------------------------------------------------------
def _library_rows(s3: Any, bucket: str, n: int) -> list[dict]:
    import obstore
    import s3fs

    from mediaq.runtime.storage.objects import _client

    store = _client(f"s3://{bucket}")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3.endpoint})
    data = os.urandom(30_000)
    ops = {
        "PUT": (lambda k: obstore.put(store, k, data), lambda k: fs.pipe(f"{bucket}/{k}", data)),
        "GET": (lambda k: bytes(obstore.get(store, k).bytes()), lambda k: fs.cat(f"{bucket}/{k}")),
        "ranged GET (64 KiB header)": (lambda k: bytes(obstore.get(store, k, options={"range": (0, 65536)}).bytes()),
                                       lambda k: fs.cat_file(f"{bucket}/{k}", start=0, end=65536)),
    }
    totals: dict[tuple[str, str], list[float]] = {}
    for _round in range(2):
        for op, fns in ops.items():
            for lib, fn in zip(("obstore", "s3fs"), fns, strict=True):
                keys = [f"lib/{lib}/{i}.jpg" for i in range(n)]
                t, c = time.perf_counter(), _cpu()
                for k in keys:
                    fn(k)
                wall, cpu = time.perf_counter() - t, _cpu() - c
                acc = totals.setdefault((op, lib), [0.0, 0.0])
                acc[0] += wall
                acc[1] += cpu
    rows = []
    for op in ops:
        (ow, oc), (sw, sc) = totals[(op, "obstore")], totals[(op, "s3fs")]
        rows.append(row(f"{op} of 30 kB objects, obstore vs s3fs (same S3 server)", 2 * n / ow, 2 * n / sw,
                        "requests/s", baseline_name="fsspec/s3fs"))
        rows.append(row("  same, client CPU per request", 1000 * oc / (2 * n), 1000 * sc / (2 * n), "ms",
                        higher_is_better=False, baseline_name="fsspec/s3fs"))
    return rows


# -- 2. thumbnails from and to S3 against local disk -------------------------------------------------
async def _thumbs_rate(ctx: BenchContext, storage: str, sources: list[str], tag: str) -> float:
    settings = ctx.settings.replace(storage=storage, worker_processes=2)
    ctx.flush()
    with ctx.start_worker(storage=storage, worker_processes=2):
        async with await mediaq.connect(settings=settings) as client:
            items = [{"image_id": f"p{i}", "source_path": s} for i, s in enumerate(sources)]
            batch = await client.enqueue_many("create_thumbnail", items, batch=tag)
            await batch.wait(progress=False, timeout=900, poll_interval=0.1)
            df = await batch.results()
    if (df.status != "complete").any():
        raise RuntimeError(f"thumbnails failed: {df[df.status != 'complete'].iloc[0].to_dict()}")
    import pandas as pd

    first, last = pd.to_datetime(df.start_time).min(), pd.to_datetime(df.finish_time).max()
    return len(df) / (last - first).total_seconds()


def _where_time_goes(bucket: str, keys: list[str]) -> dict[str, float]:
    """Milliseconds per thumbnail for each step, in this process, one image at a time."""
    from mediaq.runtime.storage.urls import open_source, open_store

    store = open_store(f"s3://{bucket}/where")
    spent = {"transfer": 0.0, "decode+encode": 0.0, "upload": 0.0}
    for i, key in enumerate(keys):
        t0 = time.perf_counter()
        with open_source(f"s3://{bucket}/{key}") as f:
            data = f.read()
        t1 = time.perf_counter()
        out, _ = imaging.thumbnail(data, BOX)
        t2 = time.perf_counter()
        store.write(f"thumbs/p{i}.jpg", out.data)
        t3 = time.perf_counter()
        spent["transfer"] += t1 - t0
        spent["decode+encode"] += t2 - t1
        spent["upload"] += t3 - t2
    return {k: 1000 * v / len(keys) for k, v in spent.items()}


# -- 3. two hosts' workers against one worker with both cores ------------------------------------------
async def _workers_rate(ctx: BenchContext, sources: list[str], workers: int, processes: int, tag: str) -> float:
    import contextlib

    import pandas as pd

    ctx.flush()
    storage = str(ctx.tmp / f"out-{tag}")
    with contextlib.ExitStack() as stack:
        for _ in range(workers):
            stack.enter_context(ctx.start_worker(storage=storage, worker_processes=processes))
        async with await mediaq.connect(settings=ctx.settings.replace(storage=storage)) as client:
            items = [{"image_id": f"p{i}", "source_path": s} for i, s in enumerate(sources)]
            batch = await client.enqueue_many("create_thumbnail", items, batch=tag)
            await batch.wait(progress=False, timeout=900, poll_interval=0.1)
            df = await batch.results()
    first, last = pd.to_datetime(df.start_time).min(), pd.to_datetime(df.finish_time).max()
    return len(df) / (last - first).total_seconds()


# -- 4. listing ----------------------------------------------------------------------------------------
def _fill(bucket: str, prefix: str, n: int) -> None:
    import obstore

    from mediaq.runtime.storage.objects import _client

    store = _client(f"s3://{bucket}")

    async def put_all() -> None:
        sem = asyncio.Semaphore(64)

        async def put(i: int) -> None:
            async with sem:
                await obstore.put_async(store, f"{prefix}/{i // 1000:03d}/img{i:06d}.jpg", b"x")

        await asyncio.gather(*(put(i) for i in range(n)))

    asyncio.run(put_all())


def run(ctx: BenchContext) -> list[dict]:
    sys.path.insert(0, str(TESTS))
    from s3server import S3Server  # the tests' launcher of moto's server

    s3 = S3Server()
    saved = {k: os.environ.get(k) for k in s3.env()}
    os.environ.update(s3.env())
    rows: list[dict] = []
    try:
        bucket = s3.new_bucket("bench")
        rows += _library_rows(s3, bucket, 100 if ctx.quick else 300)

        photos = _photos(ctx, 24 if ctx.quick else 80)
        client = s3.boto3()
        keys = []
        for p in photos:
            keys.append(f"photos/{p.name}")
            client.put_object(Bucket=bucket, Key=keys[-1], Body=p.read_bytes())
        local_sources, s3_sources = [str(p) for p in photos], [f"s3://{bucket}/{k}" for k in keys]
        rates: dict[str, list[float]] = {"s3": [], "local": []}
        for r in range(2):
            rates["s3"].append(asyncio.run(_thumbs_rate(ctx, f"s3://{bucket}/media{r}", s3_sources, f"s3-{r}")))
            rates["local"].append(asyncio.run(_thumbs_rate(ctx, str(ctx.tmp / f"media{r}"), local_sources,
                                                           f"local-{r}")))
        s3_rate, local_rate = (sum(v) / len(v) for v in (rates["s3"], rates["local"]))
        rows.append(row("thumbnails/s from and to S3 vs local disk (1 worker, 2 processes; moto on the same cores)",
                        s3_rate, local_rate, "images/s", baseline_name="the same photos on local disk"))
        steps = _where_time_goes(bucket, keys[:12])
        total = sum(steps.values())
        for step, ms in steps.items():
            rows.append(row(f"  S3 thumbnail, one at a time: {step} ({100 * ms / total:.0f}% of {total:.0f} ms)",
                            ms, total, "ms", higher_is_better=False, baseline_name="the whole thumbnail"))

        two = [asyncio.run(_workers_rate(ctx, local_sources, 2, 1, f"two-{r}")) for r in range(2)]
        one = [asyncio.run(_workers_rate(ctx, local_sources, 1, 2, f"one-{r}")) for r in range(2)]
        rows.append(row("thumbnails/s, 2 workers x 1 pool process vs 1 worker x 2 (target >= 0.9x)",
                        sum(two) / 2, sum(one) / 2, "images/s", baseline_name="1 worker, 2 pool processes"))

        n = 10_000 if ctx.quick else 100_000
        _fill(bucket, "many", n)
        import s3fs

        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3.endpoint})
        t = time.perf_counter()
        frame = mediaq.image_frame(f"s3://{bucket}/many/")
        ours = time.perf_counter() - t
        t = time.perf_counter()
        found = fs.find(f"{bucket}/many/")
        theirs = time.perf_counter() - t
        if len(frame) != n or len(found) != n:
            raise RuntimeError(f"listed {len(frame)} and {len(found)} of {n}")
        rows.append(row(f"list {n} objects under a prefix into image_frame vs s3fs find", ours, theirs, "s",
                        higher_is_better=False, baseline_name="s3fs.find (a list of keys)"))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3.stop()
    return rows
