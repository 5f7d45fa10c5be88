"""The embedded index shared through Redis: replicas on separate connections see the same index,
stay up to date incrementally, and query in one round trip whatever the index size."""

from __future__ import annotations

import io

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from PIL import Image

from mediaq.errors import ConfigError, InvalidHashError
from mediaq.pure.iqdb.compute import signature_from_rgb
from mediaq.pure.iqdb.scoring import LocalIndex
from mediaq.pure.iqdb.signature import Signature
from mediaq.runtime.connections import with_db
from mediaq.runtime.iqdb_index import SYNC_CHUNK, IqdbIndex, SyncIqdbIndex


def _queue_url(settings) -> str:
    return with_db(settings.redis_url, settings.queue_db, keep_explicit=False)


def _image(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (12, 15, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((250, 200), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _random_sigs(n: int, seed: int = 0) -> list[Signature]:
    """Valid random signatures (distinct indices per channel), for volume."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(1, 16384, (n, 3, 40))
    while True:  # redraw the rows that hold a repeated index
        srt = np.sort(idx, axis=2)
        bad = (srt[:, :, 1:] == srt[:, :, :-1]).any(axis=2)
        if not bad.any():
            break
        idx[bad] = rng.integers(1, 16384, (int(bad.sum()), 40))
    sign = rng.choice(np.array([-1, 1], np.int16), size=(n, 3, 40))
    avg = rng.uniform(0.05, 0.9, (n, 3)) * [1, 0.1, 0.1]
    return [Signature(tuple(avg[i]), (idx[i] * sign[i]).astype(np.int16)) for i in range(n)]


@pytest.fixture
async def two_replicas(settings):
    a = IqdbIndex.from_settings(settings)
    b = IqdbIndex(aioredis.Redis.from_url(_queue_url(settings)))
    yield a, b
    await a.aclose()
    await b.redis.aclose()


async def test_add_query_remove_across_replicas(two_replicas):
    a, b = two_replicas
    sig = await a.add(1, _image(1))
    await a.add("two", _image(2))
    assert await b.count() == 2
    top = await b.query(_image(1), limit=2)
    assert top[0].image_id == 1 and top[0].hash == sig.hash
    assert top[0].score == pytest.approx(100.0, abs=1e-4)
    assert top[1].image_id == "two"
    assert (await b.get(1)) == sig and await b.get(3) is None
    # by hash, and by signature
    assert (await b.query(sig.hash, 1))[0].image_id == 1
    assert (await b.query(sig, 1))[0].image_id == 1
    # replace on one replica, seen by the other
    await a.add(1, _image(2))
    assert (await b.get(1)).hash != sig.hash
    assert {m.image_id for m in await b.query(_image(2), 2)} == {1, "two"}
    # remove
    assert await b.remove("two") is True
    assert await b.remove("two") is False
    assert [m.image_id for m in await a.query(_image(2), 5)] == [1]
    assert len(a) == 1 and await a.count() == 1


async def test_scores_equal_an_in_memory_index(two_replicas):
    a, b = two_replicas
    sigs = {i: signature_from_rgb(np.random.default_rng(i).integers(0, 256, (60, 70, 3), dtype=np.uint8))
            for i in range(30)}
    await a.add_many(sigs.items())
    await a.remove(7)
    mem = LocalIndex()
    for i, s in sigs.items():
        if i != 7:
            mem.add(i, s)
    for q in list(sigs.values())[:5]:
        assert await b.query(q, 10) == mem.query(q, 10)


async def test_query_is_one_round_trip_whatever_the_size(settings, two_replicas):
    """Counted at the replica's connection: a query on an up-to-date replica sends exactly one
    command, with 10 or 12,000 images indexed; catching up sends one per 5,000 changes."""
    a, b = two_replicas
    sent = []
    execute = b.redis.execute_command

    async def counting(*args, **kwargs):
        sent.append(args[0])
        return await execute(*args, **kwargs)

    b.redis.execute_command = counting

    def calls() -> int:
        return len(sent)

    sigs = _random_sigs(12_000)
    await a.add_many(enumerate(sigs[:10]))
    await b.query(sigs[0], 5)
    before = calls()
    await b.query(sigs[1], 5)
    assert calls() - before == 1
    await a.add_many(enumerate(sigs))
    before = calls()
    top = await b.query(sigs[11_000], 5)  # catches up 12,000 changes
    assert calls() - before == 12_000 // SYNC_CHUNK + 1
    assert top[0].image_id == 11_000 and len(b) == 12_000
    before = calls()
    await b.query(sigs[5], 5)
    assert calls() - before == 1
    assert set(sent) <= {"EVALSHA", "SCRIPT LOAD", "EVAL"}


async def test_clear_and_flush_make_replicas_reload(settings, two_replicas):
    a, b = two_replicas
    await a.add_many([(1, _random_sigs(1, 1)[0]), (2, _random_sigs(1, 2)[0])])
    await b.refresh()
    assert len(b) == 2
    await a.clear()
    assert await b.refresh() == 0
    # a flushed database, then new adds reaching the same sequence numbers: a new epoch
    await a.add_many([(1, _random_sigs(1, 3)[0]), (2, _random_sigs(1, 4)[0])])
    assert await b.refresh() == 2
    redis.Redis.from_url(_queue_url(settings)).flushdb()
    new = _random_sigs(2, 5)
    await a.add_many([(5, new[0]), (6, new[1])])
    assert await b.refresh() == 2
    assert sorted(b.local.ids()) == [5, 6]


async def test_find_duplicates_frame(two_replicas):
    a, b = two_replicas
    for i in range(4):
        await a.add(i, _image(10 + i))
        with Image.open(io.BytesIO(_image(10 + i))) as im:
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=30)
        await a.add(f"{i}-copy", buf.getvalue())
    frame = await b.find_duplicates(90)
    assert list(frame.columns) == ["image_id", "match_id", "score"]
    assert sorted(zip(frame.image_id, frame.match_id, strict=True)) == [(i, f"{i}-copy") for i in range(4)]
    assert (frame.score >= 90).all()
    assert len(await b.find_duplicates(100.5)) == 0


def test_sync_face(settings):
    with SyncIqdbIndex.from_settings(settings) as index:
        sig = index.add(10, _image(3))
        index.add_many([(11, _random_sigs(1, 9)[0])])
        assert index.count() == 2
        assert index.query(_image(3), 1)[0].image_id == 10
        assert index.get(10) == sig
        assert index.remove(10) and not index.remove(10)
        assert [m.image_id for m in index.query(sig, 5)] == [11]
        frame = index.find_duplicates(50)
        assert frame.empty
        index.clear()
        assert index.count() == 0


async def test_mirror_query(two_replicas):
    a, b = two_replicas
    for i in range(5):
        await a.add(i, _image(20 + i))
    with Image.open(io.BytesIO(_image(22))) as im:
        buf = io.BytesIO()
        im.transpose(Image.FLIP_LEFT_RIGHT).save(buf, "JPEG", quality=90)
    top = await b.query(buf.getvalue(), 1, mirror=True)
    assert top[0].image_id == 2 and top[0].score > 90


async def test_bad_arguments(settings, two_replicas):
    a, _ = two_replicas
    with pytest.raises(ConfigError):
        await a.query(_image(1), limit=0)
    with pytest.raises(ConfigError):
        await a.add(1.5, _image(1))  # type: ignore[arg-type]
    decoding = aioredis.Redis.from_url(_queue_url(settings), decode_responses=True)
    with pytest.raises(ConfigError, match="decode_responses"):
        IqdbIndex(decoding)
    await decoding.aclose()


async def test_corrupt_entry_is_a_clear_error_and_is_retried(settings, two_replicas):
    a, b = two_replicas
    good = _random_sigs(2, 11)
    await a.add_many([(1, good[0])])
    await b.redis.hset(a.keys[1], "2", b"\x00" * 10)  # garbage written behind the index's back
    await b.redis.zadd(a.keys[2], {"2": 10**6})
    with pytest.raises(InvalidHashError, match="corrupt"):
        await b.refresh()
    await a.add(2, good[1])  # repaired: the next refresh applies everything
    assert await b.refresh() == 2
    assert (await b.query(good[1], 1))[0].image_id == 2
