"""The IQDB HTTP client against tests/iqdb_server.py (the documented API and its quirks, on a real
loopback socket)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import free_port
from iqdb_server import IqdbTestServer
from PIL import Image

from mediaq.errors import ConfigError, IqdbServerError, IqdbUnavailable
from mediaq.pure.iqdb.compute import compute_signature, mirror_signature
from mediaq.runtime.iqdb_server import RemoteIqdb, SyncRemoteIqdb


def _image(seed: int, fmt: str = "JPEG", flip: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (10, 13, 3), dtype=np.uint8)).resize((250, 200), Image.BILINEAR)
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.fixture
def server():
    with IqdbTestServer() as s:
        yield s


async def test_add_query_remove_status(server):
    iqdb = RemoteIqdb(server.url)
    added = await iqdb.add(1, _image(1))
    assert added.image_id == 1 and added.hash.startswith("iqdb_") and len(added.hash) == 533
    assert added.local_hash_matches  # the server's hash and mediaq's agree
    await iqdb.add(2, _image(2))
    top = await iqdb.query(_image(1), limit=2)
    assert [m.image_id for m in top] == [1, 2]
    assert top[0].score == pytest.approx(100.0, abs=1e-4) and top[0].hash == added.hash
    by_hash = await iqdb.query(added.hash, limit=1)
    assert by_hash[0].image_id == 1
    assert (await iqdb.query(added.signature, limit=1))[0].image_id == 1
    # replace: id 1 now holds image 2
    await iqdb.add(1, _image(2))
    assert {m.image_id for m in await iqdb.query(_image(2), limit=5)} == {1, 2}
    await iqdb.remove(2)
    await iqdb.remove(12345)  # unknown ids are fine
    assert [m.image_id for m in await iqdb.query(_image(2), limit=5)] == [1]
    capacity = await iqdb.status()
    assert capacity >= 50_000  # a capacity, not a count of 1 image
    assert await iqdb.capacity() == capacity


async def test_png_is_converted_to_jpeg_and_hash_form_is_urlencoded(server):
    iqdb = RemoteIqdb(server.url)
    png = _image(3, "PNG")
    added = await iqdb.add(3, png)
    assert added.hash == compute_signature(png).hash
    await iqdb.query(added.hash, limit=1)
    methods = [(m, p, h.get("Content-Type", "")) for m, p, h in server.requests]
    assert methods[0][2].startswith("multipart/form-data")
    assert methods[1][1] == "/query?limit=1" and methods[1][2] == "application/x-www-form-urlencoded"


async def test_one_connection_per_request_and_limit_always_sent(server):
    iqdb = RemoteIqdb(server.url)
    for i in range(3):
        await iqdb.add(i, _image(i))
    await iqdb.query(_image(0))
    await iqdb.status()
    sync = SyncRemoteIqdb(server.url)
    sync.query(_image(1), limit=2)
    sync.status()
    assert len(server.requests) == 7
    assert set(server.requests_per_connection.values()) == {1}
    assert all(h.get("Connection") == "close" for _, _, h in server.requests)
    queries = [p for m, p, _ in server.requests if p.startswith("/query")]
    assert queries == ["/query?limit=10", "/query?limit=2"]


async def test_limit_zero_never_reaches_the_server(server):
    iqdb = RemoteIqdb(server.url)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="limit"):
            await iqdb.query(_image(1), limit=bad)
    with pytest.raises(ConfigError):
        SyncRemoteIqdb(server.url).query(_image(1), limit=0)
    assert server.limit_zero == 0 and server.requests == []


async def test_server_errors_are_clear_500(server):
    iqdb = RemoteIqdb(server.url)
    with pytest.raises(IqdbServerError) as info:
        await iqdb._request("POST", "/images/5", files={"file": ("x.jpg", b"\xff\xd8garbage", "image/jpeg")})
    err = info.value
    assert err.status == 500 and err.exception == "imgdb::image_error"
    assert err.server_message == "Could not read image." and "Could not read image." in str(err)
    assert err.backtrace
    with pytest.raises(IqdbServerError) as info:
        await iqdb._request("POST", "/query", params={"limit": "1"}, data={"hash": "iqdb_nope"})
    assert info.value.status == 500 and "param_error" in str(info.value)
    with pytest.raises(IqdbServerError) as info:  # a POST with no body: HTTP 400
        await iqdb._request("POST", "/query", params={"limit": "1"})
    assert info.value.status == 400
    # the quirk the client prevents: the test server fails on limit=0 like the real one
    with pytest.raises(IqdbServerError):
        await iqdb._request("POST", "/query", params={"limit": "0"}, data={"hash": "x"})
    assert server.limit_zero == 1


async def test_unreachable_server():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(IqdbUnavailable, match="unreachable"):
        await RemoteIqdb(url, timeout=2).status()
    with pytest.raises(IqdbUnavailable):
        SyncRemoteIqdb(url, timeout=2).add(1, _image(1))


async def test_bad_ids_and_urls():
    with pytest.raises(ConfigError):
        RemoteIqdb("localhost:5588")
    iqdb = RemoteIqdb("http://127.0.0.1:9")
    for bad in (-1, 2**32, "12", 1.0):
        with pytest.raises(ConfigError, match="post ids"):
            await iqdb.add(bad, _image(1))  # type: ignore[arg-type]


async def test_mirror_query_uses_hashes(server):
    iqdb = RemoteIqdb(server.url)
    for i in range(4):
        await iqdb.add(i, _image(30 + i))
    flipped = _image(32, flip=True)
    top = await iqdb.query(flipped, limit=1, mirror=True)
    assert top[0].image_id == 2 and top[0].score > 90
    sent = [h.get("Content-Type") for m, p, h in server.requests if p.startswith("/query")]
    assert sent == ["application/x-www-form-urlencoded"] * 2
    assert mirror_signature(mirror_signature(compute_signature(flipped))) == compute_signature(flipped)


def test_sync_face(server):
    iqdb = SyncRemoteIqdb(server.url)
    added = iqdb.add(7, _image(7))
    assert iqdb.query(added.hash, limit=1)[0].image_id == 7
    iqdb.remove(7)
    assert iqdb.query(added.hash, limit=1) == []
    assert iqdb.status() >= 50_000


async def test_iqdb_rs_answers():
    """iqdb-rs sends no hash when adding and reports errors as HTTP 400 {"error": ...}."""
    with IqdbTestServer(flavor="iqdb-rs") as server:
        iqdb = RemoteIqdb(server.url)
        added = await iqdb.add(4, _image(4))
        assert added.local_hash_matches is None and added.hash == compute_signature(_image(4)).hash
        assert (await iqdb.query(added.hash, limit=1))[0].image_id == 4
        with pytest.raises(IqdbServerError) as info:
            await iqdb._request("POST", "/images/5", files={"file": ("x.jpg", b"\xff\xd8garbage", "image/jpeg")})
        assert info.value.status == 400 and info.value.server_message == "invalid_image"
        await iqdb.remove(4)
        assert await iqdb.query(added.hash, limit=1) == []
