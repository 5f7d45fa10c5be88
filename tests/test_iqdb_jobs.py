"""The IQDB jobs: called directly (error codes), and through a real worker subprocess on both
backends (the embedded index in Redis, and an HTTP server), including a transient outage."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port, png_header
from iqdb_server import IqdbTestServer
from PIL import Image

import mediaq
from mediaq.errors import PermanentJobError, TransientJobError
from mediaq.jobs.iqdb import add_to_iqdb, remove_from_iqdb
from mediaq.pure.iqdb.compute import compute_signature
from mediaq.runtime.iqdb_index import IqdbIndex

DATA = Path(__file__).resolve().parent.parent / "data"


def _write_thumb(settings, name: str, seed: int, fmt: str = "JPEG") -> str:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).resize((250, 200), Image.BILINEAR)
    path = Path(Path(settings.storage)) / "thumbs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)
    return str(path)


# -- direct calls (no worker): arguments and error codes ------------------------------------------------
async def test_direct_embedded(settings, client):
    ctx = {"settings": settings, "redis": client.redis}
    path = _write_thumb(settings, "1.jpg", 1)
    result = await add_to_iqdb(ctx, 1, "thumbs/1.jpg")  # relative to storage
    assert result == {"image_id": 1, "hash": compute_signature(path).hash, "grayscale": False,
                      "backend": "embedded", "server_hash_matches": None, "post_id": None, "id_mapped": None}
    _write_thumb(settings, "p.png", 2, "PNG")
    assert (await add_to_iqdb(ctx, "p", str(Path(settings.storage) / "thumbs/p.png")))["hash"].startswith("iqdb_")
    assert await remove_from_iqdb(ctx, "p") == {"image_id": "p", "backend": "embedded", "removed": True}
    assert (await remove_from_iqdb(ctx, "p"))["removed"] is False


@pytest.mark.parametrize(("image_id", "path", "code"), [
    (1, "thumbs/missing.jpg", "missing_file"),
    (1, "thumbs/garbage.jpg", "bad_image"),
    (1, "", "bad_argument"),
    (1.5, "thumbs/ok.jpg", "bad_argument"),
    ("", "thumbs/ok.jpg", "bad_argument"),
    # one rule for image ids in every job: what create_thumbnail refuses, add_to_iqdb refuses
    ("../x", "thumbs/ok.jpg", "bad_argument"),
    ("a\x00b", "thumbs/ok.jpg", "bad_argument"),
    ("/etc/passwd", "thumbs/ok.jpg", "bad_argument"),
    (-1, "thumbs/ok.jpg", "bad_argument"),
    # a source that can never be read is permanent, not retried
    (1, "/proc/self/status", "unreadable"),
    # the pixel limit, from the header, before anything is decoded
    (1, "thumbs/bomb.png", "too_large"),  # claims 15000 x 15000: beyond Pillow's own hard limit
    (1, "thumbs/big.png", "too_large"),  # a real 1200 x 1000 picture, over a 1 Mpx limit
    (1, "thumbs/big.jpg", "too_large"),  # the same as a JPEG (sent to a server as it is)
])
async def test_direct_permanent_errors(settings, client, image_id, path, code):
    thumbs = Path(settings.storage) / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    (thumbs / "garbage.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    (thumbs / "bomb.png").write_bytes(png_header(15000, 15000))
    Image.new("RGB", (1200, 1000), (10, 200, 30)).save(thumbs / "big.png")
    Image.new("RGB", (1200, 1000), (10, 200, 30)).save(thumbs / "big.jpg")
    _write_thumb(settings, "ok.jpg", 3)
    ctx = {"settings": settings.replace(max_image_pixels=1_000_000), "redis": client.redis}
    with pytest.raises(PermanentJobError) as info:
        await add_to_iqdb(ctx, image_id, path)
    assert info.value.code == code
    assert await IqdbIndex(client.redis).count() == 0  # nothing half-written
    if code == "bad_argument" and path:
        with pytest.raises(PermanentJobError) as info:
            await remove_from_iqdb(ctx, image_id)
        assert info.value.code == "bad_argument"


async def test_direct_server_errors(settings):
    path = _write_thumb(settings, "1.jpg", 1)
    ctx = {"settings": settings.replace(iqdb_url=f"http://127.0.0.1:{free_port()}"), "job_try": 3}
    with pytest.raises(TransientJobError) as info:  # last try: the real error, not a Retry
        await add_to_iqdb(ctx, 1, path)
    assert info.value.code == "iqdb_unreachable"
    with pytest.raises(PermanentJobError) as info:
        await add_to_iqdb({"settings": ctx["settings"]}, "not-an-int", path)
    assert info.value.code == "bad_argument"


# -- through a real worker ------------------------------------------------------------------------------
async def test_worker_embedded_index(client, settings, start_worker):
    start_worker()
    paths = {i: _write_thumb(settings, f"{i}.jpg", 10 + i) for i in range(6)}
    ids = [await client.enqueue_job("add_to_iqdb", i, f"thumbs/{i}.jpg") for i in paths]
    results = [await client.result(job_id, timeout=60) for job_id in ids]
    assert [r["hash"] for r in results] == [compute_signature(p).hash for p in paths.values()]
    assert all(r["backend"] == "embedded" for r in results)
    index = IqdbIndex(client.redis)
    for i, p in paths.items():
        top = await index.query(p, limit=1)
        assert top[0].image_id == i and top[0].score == pytest.approx(100, abs=1e-4)
    # a bad image fails at once with its code, and leaves the index as it was
    (Path(settings.storage) / "thumbs" / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(mediaq.JobError) as info:
        await client.result(await client.enqueue_job("add_to_iqdb", 99, "thumbs/bad.jpg"), timeout=60)
    assert info.value.code == "bad_image"
    assert await index.count() == 6
    removed = await client.result(await client.enqueue_job("remove_from_iqdb", 3), timeout=60)
    assert removed == {"image_id": 3, "backend": "embedded", "removed": True}
    assert 3 not in {m.image_id for m in await index.query(paths[3], limit=6)}


async def test_worker_server_backend_and_transient_outage(client, settings, start_worker):
    port = free_port()
    start_worker(iqdb_url=f"http://127.0.0.1:{port}", retry_backoff=0.5, max_tries=5)
    path = _write_thumb(settings, "5.jpg", 5)
    # the server is down: the job is retried (transient) until it comes up, then succeeds
    job_id = await client.enqueue_job("add_to_iqdb", 5, "thumbs/5.jpg")
    await _first_try_over(client, job_id)
    server = IqdbTestServer(port=port).start()
    try:
        started = time.monotonic()
        result = await client.result(job_id, timeout=60)
        assert result["backend"] == "server" and result["server_hash_matches"] is True
        assert result["hash"] == compute_signature(path).hash
        assert server.index.get(5) is not None and time.monotonic() - started < 60
        assert [p for _, p, _ in server.requests] == ["/images/5"]
        assert (await client.job(job_id).result_info()).job_try >= 2  # it was retried
        server.requests.clear()
        # a server-side refusal (HTTP 500 JSON) is permanent, with the server's words
        server.fail_next.append(("iqdb::image_error", "Could not read image.", 500))
        with pytest.raises(mediaq.JobError) as info:
            await client.result(await client.enqueue_job("add_to_iqdb", 7, "thumbs/5.jpg"), timeout=60)
        assert info.value.code == "iqdb_rejected" and "Could not read image." in info.value.message
        # a proxy's 503 is transient: retried, then it works
        server.fail_next.append(("proxy", "Service Unavailable", 503))
        job_id = await client.enqueue_job("add_to_iqdb", 7, "thumbs/5.jpg")
        assert (await client.result(job_id, timeout=60))["hash"]
        assert (await client.job(job_id).result_info()).job_try == 2
        # a GIF is converted to JPEG before sending
        (Path(settings.storage) / "thumbs" / "gif.jpg").write_bytes(_gif())
        ok = await client.result(await client.enqueue_job("add_to_iqdb", 6, "thumbs/gif.jpg"), timeout=60)
        assert ok["hash"].startswith("iqdb_") and ok["server_hash_matches"] is True
        removed = await client.result(await client.enqueue_job("remove_from_iqdb", 5), timeout=60)
        assert removed == {"image_id": 5, "backend": "server", "removed": None}
        assert server.index.get(5) is None
        mapped = await client.result(await client.enqueue_job("add_to_iqdb", "x", "thumbs/5.jpg"), timeout=60)
        assert (mapped["post_id"], mapped["id_mapped"]) == (2**31 - 1, True)  # the first id the map hands out
        with pytest.raises(mediaq.JobError) as info:  # an integer id the map gave to "x"
            await client.result(await client.enqueue_job("add_to_iqdb", 2**31 - 1, "thumbs/5.jpg"), timeout=60)
        assert info.value.code == "bad_argument" and "'x'" in info.value.message
        with pytest.raises(mediaq.JobError) as info:
            await client.result(await client.enqueue_job("add_to_iqdb", "../x", "thumbs/5.jpg"), timeout=60)
        assert info.value.code == "bad_argument"
    finally:
        server.stop()


async def _first_try_over(client, job_id: str, timeout: float = 30.0) -> None:
    """Wait until the worker has run the job once and not finished it (it was deferred for a retry)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tries = await client.redis.get(f"arq:retry:{job_id}")
        running = await client.redis.exists(f"arq:in-progress:{job_id}")
        if tries and int(tries) >= 1 and not running and not await client.redis.exists(f"arq:result:{job_id}"):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the job's first try did not happen")


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("P", (120, 90), 3).save(buf, "GIF")
    return buf.getvalue()


async def test_client_iqdb_sees_what_the_worker_indexed(client, start_worker, tmp_path):
    """client.iqdb() is the same Redis-shared index the worker's add_to_iqdb writes to."""
    from PIL import Image

    start_worker()
    path = tmp_path / "x.jpg"
    Image.radial_gradient("L").convert("RGB").resize((250, 200)).save(path, quality=90)
    job_id = await client.enqueue_job("add_to_iqdb", "x1", str(path))
    result = await client.result(job_id, timeout=60)
    matches = await client.iqdb().query(str(path), 3)
    assert matches[0].image_id == "x1" and matches[0].hash == result["hash"]


async def test_reindex_a_folder_and_a_frame_into_an_iqdb_server(client, settings, start_worker, tmp_path):
    """A library's ids are file names (strs) or integers: with MEDIAQ_IQDB_URL both reach the server.
    Integers 0..2**31-1 are the post ids themselves; other ids get a stable post id from the map in
    Redis, and a query answers with the library's own ids."""
    import shutil

    folder = tmp_path / "library"
    folder.mkdir()
    for name in ("astronaut.jpg", "chelsea.png", "coffee.jpg", "camera.png"):
        shutil.copy(DATA / name, folder / name)
    shutil.copy(DATA / "rocket.jpg", folder / "3001.jpg")
    with IqdbTestServer() as server:
        start_worker(iqdb_url=server.url)
        batch = await client.reindex(folder)
        counts = await batch.wait(progress=False, timeout=120)
        failed = await batch.failed()
        assert counts["failed"] == 0, failed[["job_id", "error_code", "error_message"]].to_string()
        assert counts["complete"] == 10 and len(server.index) == 5  # 5 images, 5 reindex + 5 add_to_iqdb jobs
        from mediaq.runtime.iqdb_ids import PostIdMap

        results = await batch.results()
        added = results[results["function"] == "add_to_iqdb"].set_index("image_id")
        assert set(added.index) == set(mediaq.image_frame(folder)["image_id"])
        assert added["id_mapped"].all() and (added["backend"] == "server").all()
        mapped = PostIdMap(client.redis)
        assert await mapped.post_ids(list(added.index)) == added["post_id"].tolist()
        assert all(server.index.get(int(p)) is not None for p in added["post_id"])
        async with await mediaq.connect(settings=settings.replace(iqdb_url=server.url)) as remote_client:
            top = await remote_client.iqdb().query(str(Path(settings.storage) / "thumbs" / "coffee.jpg.jpg"), limit=1)
        assert top[0].image_id == "coffee.jpg" and top[0].score > 99
        with mediaq.connect_sync(settings=settings.replace(iqdb_url=server.url)) as sync_client:
            top = sync_client.iqdb().query(str(Path(settings.storage) / "thumbs" / "3001.jpg.jpg"), limit=1)
        assert top[0].image_id == "3001.jpg" and top[0].score > 99
        # integer ids stay integers, end to end, and are the post ids themselves
        frame = mediaq.image_frame(folder).head(2).assign(image_id=[7, 2**31 - 100])
        batch = await client.reindex(frame, batch="by-int")
        assert (await batch.wait(progress=False, timeout=120))["complete"] == 4
        results = await batch.results()
        ints = results[results["function"] == "add_to_iqdb"]
        assert sorted(zip(ints["image_id"], ints["post_id"], ints["id_mapped"], strict=True)) == [
            (7, 7, False), (2**31 - 100, 2**31 - 100, False)]
        assert all(type(i) is int for i in ints["image_id"])
        assert server.index.get(7) is not None and server.index.get(2**31 - 100) is not None
