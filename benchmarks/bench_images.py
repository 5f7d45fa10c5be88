"""Image benchmarks (issue 3), all measured in one run on the same files.

1. Thumbnails (3000x2000 JPEG q90 photo mosaics -> fit 250x200, JPEG q87 files) through the queue,
   one local worker with a 2-process pool, against the fastest direct Pillow method that keeps
   >= 45 dB, run in a 2-process pool with no queue. Also: every other direct method (``draft`` to
   the target size, ``Image.thumbnail``, naive full decode, pyvips if importable) in the same pool,
   and each method's PSNR against a full-decode LANCZOS reference (pixels before JPEG encoding).
   CPU per thumbnail: the worker, its pool and the Redis server against the direct method's pool
   alone, and against that pool plus the process whose threads dispatch to it (as the worker's
   main process does for the queue). Beside them, the job's own work alone in this process
   (:func:`job_ceiling`): the most the queue can reach against the direct method, were it free.
2. Thumbnail + medium + large per image: the one-decode ``create_image_set`` (large resized from
   the decode, medium from large, thumbnail from medium) against three separate jobs, one pool
   process (one core of image work); and the PSNR of each of its outputs against a LANCZOS resize
   of the full decode to that output's size (pixels before encoding, target >= 45 dB). Beside
   them, the same pixel work alone in this process (:func:`pixel_ceiling`): the most the one-decode
   job can gain over the separate jobs, whatever the queue costs.

The direct methods read the file, resize, encode JPEG q87 and write it with a plain ``save``; the
queue jobs also fsync each file and rename it into place (atomic writes), in the pool process for a
local folder.
Figures depend on the machine and on its load: ratios measured in the same run are what to compare.
"""

from __future__ import annotations

import asyncio
import importlib.util
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
from PIL import Image

import mediaq
from benchmarks._harness import BenchContext, cpu_seconds, row
from mediaq.pure import imaging
from mediaq.runtime.localworker import LocalWorker

BOX = (250, 200)
QUALITY = 87
TARGET_DB = 45.0
DATA = Path(__file__).resolve().parents[1] / "data"


# -- direct methods (module level: they run in pool processes) --------------------------------------
def _fit(im: Image.Image) -> tuple[int, int]:
    return imaging.fit_size(im.size, BOX)


def pixels_full_lanczos(path: str) -> Image.Image:
    """The reference: full decode, one LANCZOS resize."""
    with Image.open(path) as im:
        return im.convert("RGB").resize(_fit(im), Image.Resampling.LANCZOS)


def pixels_draft(path: str, gap: float) -> Image.Image:
    """``draft()`` to ``gap`` x the target, then ``reduce()`` + LANCZOS (``gap`` 1: to the target)."""
    im = Image.open(path)
    size = _fit(im)
    drafted = im.draft("RGB", (int(size[0] * gap), int(size[1] * gap)))
    return im.resize(size, Image.Resampling.LANCZOS, box=drafted[1] if drafted else None, reducing_gap=gap)


def pixels_thumbnail(path: str) -> Image.Image:
    """Pillow's own ``Image.thumbnail`` (BICUBIC, reducing_gap 2)."""
    im = Image.open(path)
    im.thumbnail(BOX)
    return im


def pixels_pyvips(path: str) -> Image.Image:
    import pyvips

    th = pyvips.Image.thumbnail(path, BOX[0], height=BOX[1], size="down")
    arr = np.ndarray(buffer=th.write_to_memory(), dtype=np.uint8, shape=(th.height, th.width, th.bands))
    return Image.fromarray(arr)


def pixels_mediaq(path: str) -> Image.Image:
    """mediaq's pipeline before encoding (what the jobs run)."""
    return imaging.render(imaging.decode(imaging.read_source(path), [BOX], name=path), BOX)


SET_BOXES = {"thumbnail": BOX, "medium": (1280, 1280), "large": (2560, 2560)}  # the settings' defaults


def set_psnr(path: str) -> dict[str, float]:
    """PSNR of each ``create_image_set`` output (rendered as the job does, lossless) against a
    LANCZOS resize of the full decode to its size."""
    import io

    specs = {k: imaging.OutputSpec(box, "png") for k, box in SET_BOXES.items()}
    with imaging.open_source(path) as f:
        outs = imaging.render_outputs(imaging.decode(f, list(SET_BOXES.values()), name=path), specs)
    with Image.open(path) as im:
        full = im.convert("RGB")
    return {k: _psnr(Image.open(io.BytesIO(o.data)), full.resize((o.width, o.height), Image.Resampling.LANCZOS))
            for k, o in outs.items()}


def pixel_ceiling(paths: list[str], rounds: int) -> tuple[float, float]:
    """Median CPU seconds per image of the pixel work alone (bytes in memory, JPEG q87 outputs, no
    queue, no files), this process: (one decode + the cascade, three decodes as the separate jobs
    do), alternating round by round. The set job cannot beat the separate jobs by more than this
    ratio, whatever the queue does (it saves decodes and resizes, nothing else)."""
    specs = {k: imaging.OutputSpec(box) for k, box in SET_BOXES.items()}
    datas = [Path(p).read_bytes() for p in paths]

    def one_decode(data: bytes) -> None:
        imaging.render_outputs(imaging.decode(data, list(SET_BOXES.values())), specs)

    def separate(data: bytes) -> None:
        for key, spec in specs.items():
            imaging.render_outputs(imaging.decode(data, [spec.box]), {key: spec})

    return _alternating_cpu(one_decode, separate, datas, rounds)


def job_ceiling(paths: list[str], method: str, out_dir: Path, rounds: int) -> tuple[float, float]:
    """Median CPU seconds per thumbnail in this process, no queue and no pool: (what a
    ``create_thumbnail`` job runs in its pool process: :func:`mediaq.jobs.images.make_outputs`, read,
    decode, render, encode, fsynced atomic write into a storage folder; ``direct_job`` with
    ``method``: the same pixels, a plain ``save``), alternating round by round. The queue cannot beat
    the direct method by more than this ratio, however little it costs itself."""
    from mediaq.jobs.images import make_outputs

    spec = {"thumbnail": imaging.OutputSpec(BOX, "jpeg", QUALITY)}
    out_dir.mkdir(parents=True, exist_ok=True)

    def job(item: tuple[int, str]) -> None:
        make_outputs(item[1], spec, str(out_dir / "storage"), f"c{item[0]}")

    def direct(item: tuple[int, str]) -> None:
        direct_job(method, item[1], str(out_dir / f"c{item[0]}.jpg"))

    return _alternating_cpu(job, direct, list(enumerate(paths)), rounds)


def _alternating_cpu(a: Callable[[Any], None], b: Callable[[Any], None], items: list[Any],
                     rounds: int) -> tuple[float, float]:
    """Median CPU seconds per item of ``a`` and of ``b`` over ``items``, in this process: one warm-up
    call each, then ``rounds`` rounds, each running ``a`` then ``b`` over every item."""
    seen: dict[Callable[[Any], None], list[float]] = {a: [], b: []}
    for fn in seen:
        fn(items[0])
    for _ in range(rounds):
        for fn, times in seen.items():
            started = time.process_time()
            for item in items:
                fn(item)
            times.append((time.process_time() - started) / len(items))
    return float(np.median(seen[a])), float(np.median(seen[b]))


METHODS: dict[str, Callable[[str], Image.Image]] = {
    "Pillow draft(2x)+reduce+LANCZOS": lambda p: pixels_draft(p, 2.0),
    "Pillow draft(1x)+LANCZOS": lambda p: pixels_draft(p, 1.0),
    "Pillow Image.thumbnail": pixels_thumbnail,
    "Pillow full decode+LANCZOS": pixels_full_lanczos,
    "pyvips thumbnail": pixels_pyvips,
}


def direct_job(method: str, path: str, out: str) -> None:
    """One direct thumbnail: read, resize with ``method``, encode JPEG q87, write (plain save)."""
    if method == "pyvips thumbnail":
        import pyvips

        pyvips.Image.thumbnail(path, BOX[0], height=BOX[1], size="down").write_to_file(out, Q=QUALITY)
        return
    METHODS[method](path).save(out, "JPEG", quality=QUALITY)


def _pool_init() -> None:
    os.environ["VIPS_CONCURRENCY"] = "1"  # one thread per process for pyvips too: 2 processes = 2 cores


def _psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a.convert("RGB"), np.float64), np.asarray(b.convert("RGB"), np.float64)
    if x.shape != y.shape:  # a method that rounds the size differently: compare at the reference size
        x = np.asarray(a.convert("RGB").resize(b.size, Image.Resampling.LANCZOS), np.float64)
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _pyvips_ok() -> bool:
    try:
        import pyvips  # noqa: F401
    except (ImportError, OSError):  # OSError: the binding is installed but libvips is not
        return False
    return True


def _photos(ctx: BenchContext, n: int) -> list[str]:
    spec = importlib.util.spec_from_file_location("generate_images", DATA / "generate_images.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)  # type: ignore[union-attr]
    return [str(p) for p in gen.write_photos(ctx.tmp / "photos", n, (3000, 2000), seed=0, quality=90)]


# -- measurements -----------------------------------------------------------------------------------
def direct_rate(pool: ProcessPoolExecutor, method: str, paths: list[str],
                out_dir: Path) -> tuple[float, float, float]:
    """Images/s, CPU seconds per image of ``pool``'s processes, and of those plus this process (whose
    feeder and manager threads dispatch to the pool, as the worker's main process does for the queue),
    for ``method`` over ``paths`` (all submitted at once)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    list(pool.map(direct_job, [method] * 2, paths[:2], [str(out_dir / "warm0.jpg"), str(out_dir / "warm1.jpg")]))
    pids = list(pool._processes)  # type: ignore[attr-defined]
    cpu0, own0, t = cpu_seconds(pids), cpu_seconds([os.getpid()]), time.perf_counter()
    futures = [pool.submit(direct_job, method, p, str(out_dir / f"{i}.jpg")) for i, p in enumerate(paths)]
    for f in futures:
        f.result()
    elapsed = time.perf_counter() - t
    pool_cpu, own = cpu_seconds(pids) - cpu0, cpu_seconds([os.getpid()]) - own0
    return len(paths) / elapsed, pool_cpu / len(paths), (pool_cpu + own) / len(paths)


async def queue_rate(client: mediaq.Client, function: str, items: list[dict], batch: str,
                     pids: list[int] | None = None) -> tuple[float, float, float]:
    """(images/s from the first job's start to the last one's finish, images/s from the start of the
    bulk enqueue to the last finish, CPU seconds per image of ``pids``: the worker, its pool, Redis).

    The first figure is the throughput; the second adds the enqueue and the worker's pick-up delay
    (up to ``poll_delay``), which weighs on short runs only.
    """
    cpu0 = cpu_seconds(pids or [])
    t0 = time.time()
    b = await client.enqueue_many(function, items, job_id=batch + ":{image_id}", batch=batch)
    await b.wait(progress=False, timeout=600, poll_interval=0.1)
    cpu1 = cpu_seconds(pids or [])
    df = await b.results()
    failed = df[df["status"] != "complete"]
    if len(failed):
        raise RuntimeError(f"{len(failed)} {function} jobs failed: {failed.iloc[0].to_dict()}")
    first = pd.to_datetime(df["start_time"]).min().timestamp()
    last = pd.to_datetime(df["finish_time"]).max().timestamp()
    return len(items) / (last - first), len(items) / (last - t0), (cpu1 - cpu0) / len(items)


async def separate_rate(client: mediaq.Client, paths: list[str], batch: str) -> float:
    """Images/s when each image gets three jobs (thumbnail, medium, large), first start to last finish."""
    jobs = [("create_thumbnail", {}), ("create_variant", {"variant": "medium"}),
            ("create_variant", {"variant": "large"})]
    batches = []
    for function, extra in jobs:
        items = [{"image_id": f"{batch}{i}", "source_path": p, **extra} for i, p in enumerate(paths)]
        key = extra.get("variant", "thumb")
        batches.append(await client.enqueue_many(function, items, job_id=f"{batch}-{key}:{{image_id}}",
                                                 batch=f"{batch}-{key}"))
    first, last = float("inf"), 0.0
    for b in batches:
        await b.wait(progress=False, timeout=600, poll_interval=0.1)
        df = await b.results()
        if (df["status"] != "complete").any():
            raise RuntimeError(f"separate jobs failed: {df[df['status'] != 'complete'].iloc[0].to_dict()}")
        first = min(first, pd.to_datetime(df["start_time"]).min().timestamp())
        last = max(last, pd.to_datetime(df["finish_time"]).max().timestamp())
    return len(paths) / (last - first)


async def _thumbnail_part(ctx: BenchContext, paths: list[str], methods: list[str], first: list[str],
                          n_jobs: int, repeats: int) -> dict[str, tuple[float, ...]]:
    """Median over ``repeats`` rounds of (images/s..., CPU s per image) for every direct method and
    for the queue (key ``"queue"``). Each round runs the ``first`` methods (the candidates for the
    baseline) right before the queue, then the others, so that load from elsewhere on the machine
    hits the compared figures alike. The idle pool and the idle worker cost next to nothing meanwhile."""
    seen: dict[str, list[tuple[float, ...]]] = {}
    n_naive = max(8, n_jobs // 6)  # the naive full decode is ~8x slower: fewer images
    jobs_for = {m: [paths[i % len(paths)] for i in range(n_naive if "full" in m else n_jobs)] for m in methods}
    mp = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(2, mp_context=mp, initializer=_pool_init) as pool, \
            ctx.start_worker(worker_processes=2) as worker:
        client = await mediaq.connect(settings=ctx.settings)
        try:
            await queue_rate(client, "create_thumbnail",
                             [{"image_id": f"w{i}", "source_path": p} for i, p in enumerate(paths[:4])], "warm")
            pids = _worker_pids(ctx, worker)
            for r in range(repeats):
                for m in first:
                    seen.setdefault(m, []).append(direct_rate(pool, m, jobs_for[m], ctx.tmp / "direct" / m.split()[1]))
                items = [{"image_id": f"q{r}-{i}", "source_path": paths[i % len(paths)]} for i in range(n_jobs)]
                seen.setdefault("queue", []).append(await queue_rate(client, "create_thumbnail", items, f"q{r}", pids))
                for m in methods:
                    if m not in first:
                        seen.setdefault(m, []).append(
                            direct_rate(pool, m, jobs_for[m], ctx.tmp / "direct" / m.split()[1]))
        finally:
            await client.close()
    return {key: tuple(float(np.median(col)) for col in zip(*runs, strict=True)) for key, runs in seen.items()}


def _worker_pids(ctx: BenchContext, worker: LocalWorker) -> list[int]:
    """The worker, its pool and forkserver, and the embedded Redis server."""
    from mediaq.runtime.server import EmbeddedServer

    pids = [worker.pid, *(p.pid for p in psutil.Process(worker.pid).children(recursive=True))]
    server_pid = EmbeddedServer(ctx.settings.state_dir).status().get("pid")
    return pids + ([server_pid] if server_pid else [])


async def _set_part(ctx: BenchContext, paths: list[str], repeats: int) -> dict[str, tuple[float, float]]:
    """Median (images/s, CPU s per image) for the one-decode job and for three separate jobs, one
    pool process, alternating round by round."""
    seen: dict[str, list[tuple[float, float]]] = {"combined": [], "separate": []}
    with ctx.start_worker(worker_processes=1) as worker:
        client = await mediaq.connect(settings=ctx.settings)
        try:
            await queue_rate(client, "create_image_set", [{"image_id": "warm", "source_path": paths[0]}], "warmset")
            pids = _worker_pids(ctx, worker)
            for r in range(repeats):
                items = [{"image_id": f"s{r}-{i}", "source_path": p} for i, p in enumerate(paths)]
                rate, _, cpu = await queue_rate(client, "create_image_set", items, f"set{r}", pids)
                seen["combined"].append((rate, cpu))
                cpu0 = cpu_seconds(pids)
                sep = await separate_rate(client, paths, f"sep{r}-")
                seen["separate"].append((sep, (cpu_seconds(pids) - cpu0) / len(paths)))
        finally:
            await client.close()
    return {k: (float(np.median([v[0] for v in runs])), float(np.median([v[1] for v in runs])))
            for k, runs in seen.items()}


def run(ctx: BenchContext) -> list[dict]:
    n_photos = 4 if ctx.quick else 16
    n_jobs = 32 if ctx.quick else 200
    repeats = 2 if ctx.quick else 5
    paths = _photos(ctx, n_photos)
    methods = [m for m in METHODS if m != "pyvips thumbnail" or _pyvips_ok()]

    # quality: PSNR against full-decode LANCZOS, pixels before encoding, averaged over the photos
    refs = [pixels_full_lanczos(p) for p in paths]
    psnr = {m: float(np.mean([_psnr(METHODS[m](p), r) for p, r in zip(paths, refs, strict=True)]))
            for m in methods if m != "Pillow full decode+LANCZOS"}
    psnr["Pillow full decode+LANCZOS"] = float("inf")
    mediaq_db = float(np.mean([_psnr(pixels_mediaq(p), r) for p, r in zip(paths, refs, strict=True)]))

    qualified = [m for m in methods if psnr[m] >= TARGET_DB and m != "pyvips thumbnail"]
    measured = asyncio.run(_thumbnail_part(ctx, paths, methods, qualified, n_jobs, repeats))
    direct = {m: measured[m][0] for m in methods}
    queue, queue_total, queue_cpu = measured["queue"]

    best = max(qualified, key=lambda m: direct[m])
    rows = [
        row("thumbnails/s, queue (1 worker, 2 processes) vs fastest direct Pillow >= 45 dB (2 processes)",
            queue, direct[best], "images/s", baseline_name=f"{best}, ProcessPool(2), no queue"),
        row("same, counting the enqueue and the worker's pick-up delay (up to poll_delay)", queue_total,
            direct[best], "images/s", baseline_name=best),
        row("CPU per thumbnail: worker loop + pool + Redis server vs that method's pool", queue_cpu * 1000,
            measured[best][1] * 1000, "ms", higher_is_better=False, baseline_name=best),
        row("CPU per thumbnail: the same vs that method's pool + the process dispatching to it", queue_cpu * 1000,
            measured[best][2] * 1000, "ms", higher_is_better=False, baseline_name=f"{best}, pool + dispatcher"),
    ]
    job_cpu, direct_cpu = job_ceiling(paths, best, ctx.tmp / "ceiling", 1 if ctx.quick else 5)
    rows += [
        row("CPU per thumbnail, the job's own work alone (no queue, no pool: decode, render, encode, fsynced "
            "atomic write) vs that method (plain save), one process: the ceiling of the rows above", job_cpu * 1000,
            direct_cpu * 1000, "ms", higher_is_better=False, baseline_name=best),
        row("thumbnail PSNR vs full-decode LANCZOS, mediaq vs that method", mediaq_db, psnr[best], "dB",
            baseline_name=best),
        row("thumbnail PSNR vs full-decode LANCZOS, mediaq vs the 45 dB target", mediaq_db, TARGET_DB, "dB",
            baseline_name="target 45 dB"),
    ]
    for m in methods:
        if m == best:
            continue
        rows.append(row(f"thumbnails/s, queue vs {m} (2 processes)", queue, direct[m], "images/s", baseline_name=m))
        rows.append(row(f"thumbnail PSNR, mediaq vs {m}", mediaq_db, psnr[m], "dB", baseline_name=m))
    if "pyvips thumbnail" not in methods:
        print("# bench_images: pyvips rows left out (pyvips or libvips not importable; "
              "`pip install pyvips pyvips-binary` adds them)", file=sys.stderr)

    set_db = [set_psnr(p) for p in paths]
    for key in SET_BOXES:  # the worst photo: every output must keep the target
        rows.append(row(f"image set {key} PSNR vs full-decode LANCZOS (worst photo), one decode + cascade vs "
                        "the 45 dB target", min(d[key] for d in set_db), TARGET_DB, "dB", baseline_name="target 45 dB"))
    sets = asyncio.run(_set_part(ctx, paths, 1 if ctx.quick else 3))
    rows.append(row("thumbnail+medium+large per image, 1 pool process: one-decode job vs 3 separate jobs",
                    sets["combined"][0], sets["separate"][0], "images/s",
                    baseline_name="create_thumbnail + 2x create_variant"))
    rows.append(row("CPU per image for all three sizes: one-decode job vs 3 separate jobs", sets["combined"][1] * 1000,
                    sets["separate"][1] * 1000, "ms", higher_is_better=False,
                    baseline_name="create_thumbnail + 2x create_variant"))
    one, three = pixel_ceiling(paths, 1 if ctx.quick else 5)
    rows.append(row("CPU per image for all three sizes, pixel work alone (no queue, no files): one decode + "
                    "cascade vs 3 decodes (the ceiling of the two rows above)", one * 1000, three * 1000, "ms",
                    higher_is_better=False, baseline_name="3 separate decodes and renders"))
    return rows

