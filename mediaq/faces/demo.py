"""``mediaq demo``: the main job, end to end, on the sample data in ``data/``.

Starts (or reuses) the embedded Redis, starts a local worker, bulk-enqueues the real jobs for every
sample image (thumbnail and variants from one decode, then the IQDB index) and the Bayesian rating
recalculation for ``data/ratings.csv``, shows progress, and prints a results table with ok/failed
counts and throughput. It stops the worker it started. Every run uses fresh job ids, so it always
does the work (outputs are rewritten identically: the jobs are idempotent).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from mediaq.runtime.settings import Settings

__all__ = ["run_demo"]


def _summary(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby("function", observed=True)
    out = pd.DataFrame({
        "jobs": g.size(),
        "ok": g["status"].apply(lambda s: int((s == "complete").sum())),
        "failed": g["status"].apply(lambda s: int((s == "failed").sum())),
        "mean_run_s": g["run_seconds"].mean().round(3),
    })
    return out


async def run_demo(settings: Settings, data_dir: Path) -> int:
    """Run the demo; returns a process exit code (0 when every job succeeded)."""
    from mediaq.client.connection import connect, image_frame
    from mediaq.runtime.localworker import LocalWorker
    from mediaq.runtime.settings import redact_url

    if not data_dir.is_dir():
        print(f"error: no data folder {str(data_dir)!r}; run from the repository root or pass --data")
        return 2
    started = time.perf_counter()
    client = await connect(settings=settings)
    origin = "MEDIAQ_REDIS_URL" if settings.redis_url else f"embedded server, state in {settings.state_dir}"
    print(f"Redis   {redact_url(client.url)}  ({origin})")
    worker = LocalWorker(client.settings)
    try:
        worker.start()
        print(f"worker  pid {worker.pid}, {settings.processes} processes, log {worker.log_file}")
        print(f"storage {settings.storage}")
        run = time.strftime("%Y%m%dT%H%M%S")
        images = image_frame(data_dir)
        batches = []
        enqueue_started = time.perf_counter()
        if "reindex_image" in client.jobs and len(images):
            items = [{"image_id": i, "source_path": p, "iqdb": "add_to_iqdb" in client.jobs,
                      "batch": f"demo-{run}-images"} for i, p in zip(images["image_id"], images["source_path"],
                                                                     strict=True)]
            batches.append(await client.enqueue_many("reindex_image", items, batch=f"demo-{run}-images",
                                                     job_id=f"demo-{run}:{{image_id}}"))
        ratings_csv = data_dir / "ratings.csv"
        if "recalculate_ratings" in client.jobs and ratings_csv.exists():
            from mediaq.runtime.ratings_store import RatingsStore

            store = RatingsStore.from_settings(settings)
            try:
                store.load_csv(ratings_csv, duplicates="last")
                ids = store.image_ids()
            finally:
                store.close()
            chunks = [{"image_ids": ids[i:i + 50]} for i in range(0, len(ids), 50)]
            batches.append(await client.enqueue_many("recalculate_ratings", chunks, batch=f"demo-{run}-ratings",
                                                     job_id=f"demo-{run}:ratings:{{index}}"))
        for b in batches:
            await b.load()
        print(f"enqueued {sum(len(b) for b in batches)} jobs in "
              f"{time.perf_counter() - enqueue_started:.2f} s; waiting for the worker...")
        for b in batches:
            await b.wait(progress=True, timeout=600)
        frames = [await b.results() for b in batches]
        elapsed = time.perf_counter() - enqueue_started
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if df.empty:
            print("no job functions to demo (is mediaq installed completely?)")
            return 1
        _print_results(df)
        ok = int((df["status"] == "complete").sum())
        failed = int((df["status"] == "failed").sum())
        print(f"\n{len(df)} jobs: {ok} ok, {failed} failed in {elapsed:.2f} s "
              f"({len(df) / elapsed:.1f} jobs/s, {len(images) / elapsed:.1f} images/s); "
              f"total {time.perf_counter() - started:.1f} s")
        return 0 if failed == 0 else 1
    finally:
        worker.stop()
        await client.close()


def _print_results(df: pd.DataFrame) -> None:
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.max_colwidth", 40):
        print("\nby function:")
        print(_summary(df).to_string())
        rows = []
        for _, r in df.iterrows():
            rows.append({"function": r["function"], "image": r.get("image_id") if pd.notna(r.get("image_id"))
                         else f"{len(r.get('image_ids') or [])} images", "status": r["status"],
                         "run_s": round(r["run_seconds"], 3) if pd.notna(r["run_seconds"]) else None,
                         "detail": _detail(r)})
        print("\njobs:")
        print(pd.DataFrame(rows).to_string(index=False))


def _detail(r: pd.Series) -> str:
    if r["status"] == "failed":
        return f"{r['error_type']}: {r['error_message']}"[:70]
    parts = []
    for key in ("thumbnail", "medium", "large"):
        v = r.get(key)
        if isinstance(v, dict):
            parts.append(f"{key[0]}:{v.get('width')}x{v.get('height')}" if not v.get("skipped") else f"{key[0]}:skip")
    if isinstance(r.get("hash"), str):
        parts.append(r["hash"][:18] + "...")
    if "updated" in r and pd.notna(r["updated"]):
        parts.append(f"{int(r['updated'])} ratings updated")
    return " ".join(parts)
