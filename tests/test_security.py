"""Issue 9, item 6: outputs stay under the storage root, the embedded server is private, and data
planted in Redis (pickles, malformed job records) is refused without running anything.

Everything goes through the real job path (a worker subprocess) or the real embedded server.
(tests/test_server.py already checks the server's bind/appendonly config and the mode of its folder,
state file and config; this extends it to the sockets it really listens on, every file it writes,
and where its password can be read.)
"""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import stat
import time
from pathlib import Path

import msgpack
import numpy as np
import psutil
import pytest
import redis
from arq.jobs import DeserializationError
from PIL import Image

import mediaq
from mediaq.runtime.server import EmbeddedServer
from mediaq.runtime.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture
def photo(tmp_path) -> str:
    path = tmp_path / "src" / "photo.jpg"
    path.parent.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(path, "JPEG")
    return str(path)


def snapshot(root: Path, skip: tuple[Path, ...]) -> dict[str, tuple[int, float, bytes]]:
    """Every file under ``root`` outside ``skip``: size, mtime and first bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if any(Path(dirpath).is_relative_to(s) for s in skip):
            dirnames[:] = []
            continue
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            head = b"" if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode) else open(p, "rb").read(64)
            out[p] = (st.st_size, st.st_mtime, head)
    return out


# -- outputs never escape the storage root ----------------------------------------------------------
HOSTILE_IDS = ["../escape", "../../outside/victim", "/tmp/abs", "a/b", "..", ".", ".hidden", "-dash", "x" * 129,
               "nul\x00byte", "back\\slash", "sp ace", "é", "", "thumbs/../../x", -1, True, 3.5, None,
               ["list"], {"d": 1}]


async def test_hostile_ids_and_arguments_never_write_outside_the_root(settings, client, start_worker, photo,
                                                                       tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"precious")
    before = snapshot(tmp_path, (Path(settings.storage), settings.state_dir))
    start_worker()
    items = [{"image_id": i, "source_path": photo} for i in HOSTILE_IDS]
    items += [{"image_id": "ok1", "source_path": photo, "format": "../../x"},
              {"image_id": "ok2", "source_path": photo, "format": "/etc/passwd"}]
    batch = await client.enqueue_many("create_thumbnail", items)
    variants = [("../x", None), ("medium/../../x", None), ("medium", "../x")]
    vbatch = await client.enqueue_many("create_variant", [{"image_id": i or "v1", "source_path": photo,
                                                           "variant": v} for v, i in variants])
    sets = await client.enqueue_many("create_image_set", [{"image_id": i, "source_path": photo}
                                                          for i in HOSTILE_IDS[:6]])
    for b, n in ((batch, len(items)), (vbatch, len(variants)), (sets, 6)):
        counts = await b.wait(progress=False, timeout=60)
        assert counts["failed"] == n, counts
        df = await b.results()
        assert set(df["error_code"]) == {"bad_argument"}, df[["error_code", "error_message"]]
    assert snapshot(tmp_path, (Path(settings.storage), settings.state_dir)) == before
    assert not Path(settings.storage).exists() or not any(p.is_file() for p in Path(settings.storage).rglob("*"))


async def test_symlinks_cannot_redirect_outputs(settings, client, start_worker, photo, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.jpg"
    victim.write_bytes(b"precious")
    root = Path(settings.storage)
    root.mkdir(parents=True)
    (root / "thumbs").symlink_to(outside)  # a folder pointing out of the root
    (root / "medium").symlink_to(Path("..") / ".." / "outside")  # the same, relative
    (root / "large").mkdir()
    (root / "large" / "v.jpg").symlink_to(victim)  # a target file pointing out of the root
    before = snapshot(tmp_path, (settings.state_dir,))
    start_worker()
    for function, args in (("create_thumbnail", ("t", photo)), ("create_variant", ("m", photo, "medium", )),):
        with pytest.raises(mediaq.JobError) as info:
            await client.result(await client.enqueue_job(function, *args, edge=100) if function == "create_variant"
                                else await client.enqueue_job(function, *args), timeout=60)
        assert info.value.code == "unsafe_path", info.value
    assert snapshot(tmp_path, (settings.state_dir,)) == before
    # the symlinked target is replaced by a real file inside the root; the file it pointed to is untouched
    result = await client.result(await client.enqueue_job("create_variant", "v", photo, "large", edge=100),
                                 timeout=60)
    assert result["path"] == str(root / "large" / "v.jpg")
    assert not (root / "large" / "v.jpg").is_symlink() and Image.open(result["path"]).size == (100, 75)
    assert victim.read_bytes() == b"precious"


# -- the embedded server is private -----------------------------------------------------------------
@pytest.fixture
def private_server(tmp_path):
    settings = Settings.load(env={}, state_dir=tmp_path / "state", storage=tmp_path / "media", worker_processes=1,
                             poll_delay=0.05, health_check_interval=1)
    server = EmbeddedServer(settings.state_dir)
    url = server.ensure_running()
    yield settings, server, url
    server.stop()


def _other_addresses() -> list[str]:
    out = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                out.append(a.address)
    return out


async def test_embedded_server_listens_on_loopback_only_and_keeps_its_password_private(private_server):
    settings, server, url = private_server
    info = server.status()
    proc = psutil.Process(info["pid"])
    listening = [c for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening and {c.laddr.ip for c in listening} == {"127.0.0.1"}, listening
    assert not [c for c in proc.net_connections(kind="unix")]  # no unix socket either
    for address in _other_addresses():  # the port is closed on every other interface of this machine
        with pytest.raises(OSError):
            socket.create_connection((address, info["port"]), timeout=2).close()
    password = url.split("@")[0].rsplit(":", 1)[1]
    assert len(password) >= 32  # 24 random bytes
    r = redis.Redis(port=info["port"], socket_timeout=2)
    with pytest.raises(redis.AuthenticationError):
        r.ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=info["port"], password="guess", socket_timeout=2).ping()
    r.close()
    # the password is in no process's command line, and not in a worker's environment
    worker = mediaq.LocalWorker(settings).start()
    try:
        for pid in (info["pid"], worker.pid):
            p = psutil.Process(pid)
            assert password not in " ".join(p.cmdline())
        assert not any(password in v for v in psutil.Process(worker.pid).environ().values())
    finally:
        worker.stop()


async def test_every_state_file_is_owner_only(private_server):
    settings, server, url = private_server
    async with await mediaq.connect(settings=settings) as client:  # some data, so the AOF has content
        await client.enqueue_many("noop", range(100))
    await asyncio.sleep(1.2)
    r = redis.Redis.from_url(url)
    r.bgrewriteaof()  # the server writes a new base file and manifest
    for _ in range(100):
        if r.info("persistence")["aof_rewrite_in_progress"] == 0:
            break
        time.sleep(0.05)
    r.close()
    paths = list(server.folder.rglob("*"))
    assert any(p.name.endswith(".aof") or ".aof." in p.name for p in paths)
    assert _loose(server.folder) == {}, "readable or writable by others"
    # data left readable by an older version is made private at the next start
    for path in (server.folder / "data").rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    server.stop()
    server.ensure_running()
    assert _loose(server.folder) == {}


def _loose(folder: Path) -> dict[str, str]:
    paths = [folder, *folder.rglob("*")]
    return {str(p.relative_to(folder)): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths
            if stat.S_IMODE(p.stat().st_mode) & 0o077}


# -- untrusted data in Redis ------------------------------------------------------------------------
class _Planted:
    """Unpickling this creates the marker folder: proof that a pickle was loaded."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _bad_records(marker: str) -> dict[str, bytes]:
    """Job records planted by someone who can write to Redis, each in a different way wrong."""
    def mp(obj) -> bytes:
        return msgpack.packb(obj, use_bin_type=True)

    good = {"t": None, "f": "noop", "a": [1], "k": {}, "et": int(time.time() * 1000)}
    return {
        "pickle": pickle.dumps(_Planted(marker)),
        "pickle_v0": pickle.dumps(_Planted(marker), protocol=0),
        "not_msgpack": b"\xc1\xc1\xc1",
        "empty": b"",
        "a_list": mp([1, 2, 3]),
        "no_function": mp({k: v for k, v in good.items() if k != "f"}),
        "unhashable_function": mp({**good, "f": ["noop"]}),
        "unknown_function": mp({**good, "f": "os.system"}),
        "args_not_a_list": mp({**good, "a": 5}),
        "kwargs_not_a_map": mp({**good, "k": [1]}),
        "kwargs_int_keys": mp({**good, "k": {1: 2}}),
        "unknown_kwarg": mp({**good, "k": {"surprise": 1}}),
        "try_is_text": mp({**good, "t": "x"}),
        "enqueue_time_text": mp({**good, "et": "yesterday"}),
        "enqueue_time_none": mp({**good, "et": None}),
        "deeply_nested": b"\x91" * 100_000 + b"\x01",  # [[[[...1...]]]], deeper than any decoder recurses
        "trailing_bytes": mp(good) + b"\x00garbage",
    }


async def test_planted_job_records_fail_alone_and_run_nothing(client, start_worker, tmp_path):
    marker = tmp_path / "pwned"
    bad = _bad_records(str(marker))
    batch = await client.enqueue_many("noop", [{"value": i} for i in range(50)], job_id="good{value}", batch="mixed")
    now = int(time.time() * 1000)
    for name, payload in bad.items():  # planted as arq itself would have queued them, into the same batch
        await client.redis.psetex(f"arq:job:bad-{name}", 86_400_000, payload)
        await client.redis.zadd(client.settings.queue_name, {f"bad-{name}": now})
        await client.redis.zadd(batch.ids_key, {f"bad-{name}": 1000})
    worker = start_worker()
    counts = await batch.wait(progress=False, timeout=60)
    assert counts == {**counts, "complete": 50, "failed": len(bad), "not_found": 0}, counts
    df = (await batch.results()).set_index("job_id")
    assert [df.loc[f"good{i}", "result"] for i in range(50)] == list(range(50))
    for name in bad:
        row = df.loc[f"bad-{name}"]
        assert row["status"] == "failed" and row["error_message"], name
    for name in ("unhashable_function", "try_is_text", "enqueue_time_text", "enqueue_time_none"):
        assert "malformed job record" in df.loc[f"bad-{name}", "traceback"], name  # the reason is kept
    assert not marker.exists(), "a planted pickle was unpickled in the worker"
    assert worker.alive
    assert await client.result(await client.enqueue_job("noop", "after"), timeout=30) == "after"


async def test_planted_pickle_results_are_refused_by_the_client(client, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"s": True, "r": _Planted(str(marker)), "t": 1, "f": "noop", "a": [], "k": {},
                            "et": 0, "st": 0, "ft": 0})
    batch = await client.enqueue_many("noop", [1, 2], job_id="res{0}", batch="planted")
    await client.redis.delete("arq:job:res1")
    await client.redis.zrem(client.settings.queue_name, "res1")
    await client.redis.set("arq:result:res1", payload)
    with pytest.raises((DeserializationError, mediaq.JobError)):  # refused, not run and not waited on
        await client.result("res1", timeout=5)
    status = await batch.status()
    assert status["failed"] == 1, status  # shown as a failure, not trusted as a success
    df = (await batch.results()).set_index("job_id")
    assert df.loc["res1", "status"] == "failed"
    assert df.loc["res1", "error_type"] == "mediaq.UnreadableRecord"
    frame = await client.results_frame()
    assert "res1" in set(frame["job_id"])
    assert not marker.exists(), "a planted pickle was unpickled in the client"
