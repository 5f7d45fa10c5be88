"""The IQDB HTTP client against tests/iqdb_server.py (the documented API and its quirks, on a real
loopback socket)."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from helpers import eventually_sync, free_port
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
    assert err.status == 500 and err.exception == "iqdb::image_error"
    assert err.server_message == "Could not read image." and "Could not read image." in str(err)
    assert isinstance(err.backtrace, str) and err.backtrace
    with pytest.raises(IqdbServerError) as info:
        await iqdb._request("POST", "/query", params={"limit": "1"}, data={"hash": "iqdb_nope"})
    assert info.value.status == 500 and info.value.exception == "iqdb::param_error"
    with pytest.raises(IqdbServerError) as info:  # no file, no hash
        await iqdb._request("POST", "/query", params={"limit": "1"})
    assert info.value.status == 500 and info.value.exception == "iqdb::param_error"
    with pytest.raises(IqdbServerError) as info:  # an unknown route: 404, empty body
        await iqdb._request("GET", "/images")
    assert info.value.status == 404 and info.value.exception is None


# -- the stand-in itself: each row of tests/iqdb_server.py's table ---------------------------------------
def _http(server: IqdbTestServer, method: str, path: str, **kwargs) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        return http.request(method, path, **kwargs)


def _file(data: bytes) -> dict:
    return {"files": {"file": ("x.jpg", data, "image/jpeg")}}


def _error(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    assert isinstance(body["backtrace"], str) and body["exception"].startswith(("iqdb::", "std::"))
    return response.status_code, body["exception"], body["message"]


def test_stand_in_images_routes(server):
    added = _http(server, "POST", "/images/1", **_file(_image(1))).json()
    assert set(added) == {"post_id", "hash", "signature"} and set(added["signature"]) == {"avglf", "sig"}
    assert added["post_id"] == 1 and added["hash"] == compute_signature(_image(1)).hash
    assert _http(server, "POST", "/images/1", **_file(_image(2))).status_code == 200  # replaced
    assert server.index.get(1) == compute_signature(_image(2)) and len(server.index) == 1
    assert _error(_http(server, "POST", "/images/1")) == (
        500, "iqdb::param_error", "`POST /images/:id` requires a `file` param")
    assert _error(_http(server, "POST", f"/images/{2**31}"))[1] == "iqdb::param_error"  # the file first
    assert _error(_http(server, "POST", f"/images/{2**31}", **_file(_image(1)))) == (500, "std::out_of_range", "stoi")
    assert _error(_http(server, "DELETE", f"/images/{2**31}")) == (500, "std::out_of_range", "stoi")
    assert _http(server, "POST", f"/images/{2**31 - 1}", **_file(_image(1))).status_code == 200
    for method, path in (("POST", "/images/-1"), ("DELETE", "/images/abc"), ("GET", "/nope"), ("POST", "/images")):
        response = _http(server, method, path)
        assert (response.status_code, response.content) == (404, b"")
    assert _http(server, "DELETE", "/images/424242").json() == {"post_id": 424242}  # never added: fine
    # internal ids: 1, 1 again (the replaced row was the newest), then 2: 1 + 50,000 slots
    assert _http(server, "GET", "/status").json() == {"images": 50_001}


def test_stand_in_image_formats(server):
    assert _error(_http(server, "POST", "/images/3", **_file(_image(3, "PNG")))) == (
        500, "iqdb::image_error", "Unsupported image format.")
    assert _error(_http(server, "POST", "/images/3", **_file(b"\xff\xd8\xff\xe0 no more"))) == (
        500, "iqdb::image_error", "Could not read image.")
    whole = _image(4)
    cut = whole[: len(whole) * 2 // 3]
    added = _http(server, "POST", "/images/4", **_file(cut))
    assert added.status_code == 200 and added.json()["hash"] == compute_signature(cut + b"\xff\xd9").hash
    assert added.json()["hash"] != compute_signature(whole).hash


def test_stand_in_query_params_and_limits(server):
    for i in range(12):
        _http(server, "POST", f"/images/{i}", **_file(_image(40 + i)))
    text = compute_signature(_image(40)).hash
    assert len(_http(server, "POST", "/query", data={"hash": text}).json()) == 10  # no limit: 10
    by_query_string = _http(server, "POST", "/query", params={"hash": text, "limit": "3"}).json()
    by_form = _http(server, "POST", "/query", data={"hash": text, "limit": "3"}).json()
    by_file = _http(server, "POST", "/query?limit=3", **_file(_image(40))).json()
    assert [m["post_id"] for m in by_query_string] == [m["post_id"] for m in by_form] == [
        m["post_id"] for m in by_file] and by_form[0]["post_id"] == 0
    assert set(by_form[0]) == {"post_id", "score", "hash", "signature"}
    assert len(_http(server, "POST", "/query", data={"hash": text, "limit": "-1"}).json()) == 12  # size_t
    assert _error(_http(server, "POST", "/query", data={"hash": text, "limit": "ten"})) == (
        500, "std::invalid_argument", "stoi")
    assert _error(_http(server, "POST", "/query", data={"limit": "3"}))[1] == "iqdb::param_error"
    with pytest.raises(httpx.TransportError):  # limit=0 crashes the real server
        _http(server, "POST", "/query", data={"hash": text, "limit": "0"})
    eventually_sync(lambda: not server.running, what="the stand-in to stop after limit=0")
    assert server.limit_zero == 1
    with pytest.raises(httpx.ConnectError):
        _http(server, "GET", "/status")


def test_stand_in_equal_scores_depend_on_limit_and_black_images_never_come_back(server):
    """Six copies of one picture score exactly the same: the server's order of them comes from its
    std::priority_queue and changes with the limit (mediaq's LocalIndex keeps the indexing order)."""
    for post_id in range(1, 7):
        _http(server, "POST", f"/images/{post_id}", **_file(_image(5)))
    text = compute_signature(_image(5)).hash
    orders = {limit: [m["post_id"] for m in _http(server, "POST", "/query", data={"hash": text, "limit": limit}).json()]
              for limit in (3, 4)}
    assert orders == {3: [3, 2, 1], 4: [4, 2, 3, 1]}  # 3 before 2, then 2 before 3
    black = io.BytesIO()
    Image.new("RGB", (250, 200)).save(black, "JPEG")
    assert _http(server, "POST", "/images/9", **_file(black.getvalue())).status_code == 200
    found = _http(server, "POST", "/query", **_file(black.getvalue()), params={"limit": "20"}).json()
    assert 9 not in {m["post_id"] for m in found} and len(found) == 6


async def test_unreachable_server():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(IqdbUnavailable, match="unreachable"):
        await RemoteIqdb(url, timeout=2).status()
    with pytest.raises(IqdbUnavailable):
        SyncRemoteIqdb(url, timeout=2).add(1, _image(1))


async def test_bad_ids_and_urls():
    with pytest.raises(ConfigError):
        RemoteIqdb("localhost:5588")
    iqdb = RemoteIqdb("http://127.0.0.1:9")  # no id map: post ids 0..2**31-1 only, checked before sending
    for bad in (-1, 2**31, "x.jpg", "12a"):
        with pytest.raises(ConfigError, match="id map"):
            await iqdb.add(bad, _image(1))
    for bad in (1.0, True, ""):
        with pytest.raises(ConfigError, match="image id"):
            await iqdb.add(bad, _image(1))  # type: ignore[arg-type]


async def test_post_ids_and_the_id_map(server, client):
    """Integer ids (and their decimal text) are post ids; other ids get stable post ids from 2**31 - 1
    down, shared by every client of the Redis, translated back in queries, and never given to an
    integer id."""
    from mediaq.runtime.iqdb_ids import PostIdMap

    iqdb = RemoteIqdb(server.url, ids=PostIdMap(client.redis))
    first = await iqdb.add("cat.png", _image(1))
    assert (first.post_id, first.mapped, first.image_id) == (2**31 - 1, True, "cat.png")
    assert (await iqdb.add("dog.png", _image(2))).post_id == 2**31 - 2
    again = await RemoteIqdb(server.url, ids=PostIdMap(client.redis)).add("cat.png", _image(3))
    assert again.post_id == 2**31 - 1  # stable: the same server entry is replaced
    three = await iqdb.add("3", _image(4))
    assert (three.post_id, three.mapped) == (3, False)
    assert (await iqdb.add(2**31 + 5, _image(5))).post_id == 2**31 - 3  # too big to be a post id: mapped
    top = await iqdb.query(_image(3), limit=5)
    assert top[0].image_id == "cat.png" and {m.image_id for m in top} == {"cat.png", "dog.png", 3, 2**31 + 5}
    with pytest.raises(ConfigError, match=r"'dog\.png'"):
        await iqdb.add(2**31 - 2, _image(6))  # that post id is dog.png's
    await iqdb.remove("dog.png")
    await iqdb.remove("never-added.png")  # the map never saw it: nothing to ask the server
    assert {m.image_id for m in await iqdb.query(_image(3), limit=5)} == {"cat.png", 3, 2**31 + 5}
    assert [p for m, p, _ in server.requests if m == "DELETE"] == [f"/images/{2**31 - 2}"]
    await iqdb.add(2**31 - 5, _image(7))  # an integer id just below the mapped ones
    assert (await iqdb.add("one-more.png", _image(8))).post_id == 2**31 - 4
    with pytest.raises(ConfigError, match="no post id left"):
        await iqdb.add("and-another.png", _image(9))


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
