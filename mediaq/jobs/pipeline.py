"""The per-image reindex pipeline: thumbnail and variants from one decode, then ``add_to_iqdb``.

The origin application deferred the IQDB job by 5 s and hoped the thumbnail existed by then. Here
the image job itself enqueues ``add_to_iqdb`` once the thumbnail is written, with a deterministic id
(``<this job id>:iqdb``), so a retried or rerun pipeline never indexes twice, and adds it to the
same batch so ``batch.wait()`` covers the whole pipeline. In a bulk batch (``reindex``'s default)
the follow-up waits in the batch's pending set, ahead of the batch's other jobs, so a live job never
waits behind follow-ups either (:mod:`mediaq.runtime.bulk`).
"""

from __future__ import annotations

from typing import Any

from mediaq.runtime import keys
from mediaq.runtime.jobspec import job

__all__ = ["reindex_image"]


@job(timeout=120)
async def reindex_image(ctx: dict[str, Any], image_id: str | int, source_path: str, *, iqdb: bool = True,
                        batch: str | None = None, force: bool = False) -> dict[str, Any]:
    """Thumbnail + medium + large from one decode, then enqueue ``add_to_iqdb`` for the thumbnail
    (``force``: also when an earlier ``add_to_iqdb`` of this pipeline has a result)."""
    from mediaq.jobs.images import create_image_set

    result = await create_image_set(ctx, image_id, source_path)
    follow_up = None
    if iqdb:
        from mediaq.runtime.bulk import PENDING_TTL_MS
        from mediaq.runtime.scripts import enqueue_chunk, job_entry

        follow_up = f"{ctx['job_id']}:iqdb"
        redis = ctx["redis"]
        # in a bulk batch the follow-up waits with the batch, first in line (mediaq.runtime.bulk)
        bulk = bool(batch) and await redis.hget(keys.batch(batch), "priority") == b"bulk"
        entry = job_entry(redis.job_serializer, follow_up, "add_to_iqdb", [image_id, result["thumbnail"]["key"]],
                          {}, batch, expires_ms=PENDING_TTL_MS if bulk else None)
        # atomic: the job and its place in the batch; skipped if it exists (a retried parent)
        await enqueue_chunk(redis, ctx["settings"].queue_name, [entry], keys.batch_ids(batch) if batch else "",
                            force=force, pending=keys.batch_pending(batch) if bulk else "", first=True)
    return {**result, "iqdb_job": follow_up}
