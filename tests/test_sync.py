"""The blocking face is complete: every public async method has a blocking twin with the same arguments,
and the twins work against the real server."""

from __future__ import annotations

import inspect

import pytest

import mediaq
from mediaq.client.batch import Batch
from mediaq.client.connection import Client
from mediaq.client.sync import SyncBatch, SyncClient, SyncJob
from mediaq.runtime.iqdb_ids import PostIdMap, SyncPostIdMap
from mediaq.runtime.iqdb_index import IqdbIndex, SyncIqdbIndex
from mediaq.runtime.iqdb_server import AddResult, RemoteIqdb, SyncRemoteIqdb

PAIRS = [(Client, SyncClient), (Batch, SyncBatch), (IqdbIndex, SyncIqdbIndex), (RemoteIqdb, SyncRemoteIqdb),
         (PostIdMap, SyncPostIdMap)]
#: async-only plumbing with a differently named blocking twin (arq's aclose/close convention)
RENAMED = {"aclose": "close", "__aenter__": "__enter__", "__aexit__": "__exit__"}


def _public(cls: type) -> dict[str, object]:
    return {n: v for n, v in inspect.getmembers(cls) if not n.startswith("_") or n in {*RENAMED, *RENAMED.values()}}


def _params(fn: object) -> list[tuple[str, object, object]]:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


@pytest.mark.parametrize(("async_cls", "sync_cls"), PAIRS, ids=lambda c: c.__name__)
def test_every_async_method_has_a_blocking_twin(async_cls, sync_cls):
    sync_members = _public(sync_cls)
    for name, method in _public(async_cls).items():
        if not inspect.iscoroutinefunction(method):
            continue
        twin_name = RENAMED.get(name, name)
        twin = sync_members.get(twin_name)
        assert twin is not None, f"{sync_cls.__name__} has no blocking {twin_name}()"
        assert not inspect.iscoroutinefunction(twin), f"{sync_cls.__name__}.{twin_name} is async"
        if name not in RENAMED:
            assert _params(twin) == _params(method), f"{sync_cls.__name__}.{name} takes other arguments"


def test_the_sync_client_shares_the_io_free_base():
    from mediaq.client.base import ClientBase

    assert issubclass(SyncClient, ClientBase) and issubclass(Client, ClientBase)


def test_blocking_twins_against_the_real_server(settings, start_worker):
    start_worker()
    with mediaq.connect_sync(settings=settings) as client:
        assert repr(client).startswith("<mediaq.SyncClient redis://")
        batch = client.enqueue_many("noop", range(5), job_id="s{0}", batch="sync")
        assert isinstance(batch, SyncBatch) and len(batch) == 5 and batch.name == "sync"
        assert batch.wait(progress=False, timeout=60)["complete"] == 5
        assert client.batch("sync").load().ids == [f"s{i}" for i in range(5)]
        assert client.result("s3") == 3
        job = client.job("s3")
        assert isinstance(job, SyncJob) and job.status().value == "complete"
        assert client.enqueue_job("noop", 7, _job_id="single") == "single"
        assert client.result("single", timeout=60) == 7
        assert set(client.results_frame().job_id) >= {"single", "s0"}
        index = client.iqdb()
        assert isinstance(index, SyncIqdbIndex)
        index.add(1, "data/astronaut.jpg")
        assert [m.image_id for m in index.query("data/astronaut.jpg", limit=1)] == [1]
        assert index.count() == 1


def test_the_blocking_iqdb_face_on_a_server(settings):
    """connect_sync().iqdb() with MEDIAQ_IQDB_URL: blocking calls that return values (not coroutines),
    and the same id map as the async face."""
    from iqdb_server import IqdbTestServer

    with IqdbTestServer() as server, mediaq.connect_sync(settings=settings.replace(iqdb_url=server.url)) as client:
        iqdb = client.iqdb()
        assert isinstance(iqdb, SyncRemoteIqdb) and isinstance(iqdb.ids, SyncPostIdMap)
        added = iqdb.add("astronaut.jpg", "data/astronaut.jpg")
        assert isinstance(added, AddResult) and (added.post_id, added.mapped) == (2**31 - 1, True)
        assert isinstance(iqdb.add(5, "data/coffee.jpg"), AddResult)
        top = iqdb.query("data/astronaut.jpg", limit=2)
        assert [m.image_id for m in top] == ["astronaut.jpg", 5]
        iqdb.remove("astronaut.jpg")
        assert [m.image_id for m in iqdb.query("data/astronaut.jpg", limit=2)] == [5]
        assert iqdb.status() >= 50_000
