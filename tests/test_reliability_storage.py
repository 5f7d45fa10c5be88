"""Issue 9, item 5: a full or read-only output folder, through a real worker.

The tests run as root in CI, where ``chmod`` cannot make a folder read-only, so they use a real
file system: a small tmpfs mounted for the test (full: a filler file takes the space; read-only:
``mount -o remount,ro``). Where mounting is not permitted the tests skip and say why.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mediaq

pytestmark = pytest.mark.slow


@pytest.fixture
def tmpfs(mount_tmpfs):
    return mount_tmpfs("1m")


def remount(mnt: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mnt)], check=True)


@pytest.fixture
def photo(tmp_path) -> str:
    """A noisy 640x480 JPEG: its thumbnail takes tens of KB."""
    rng = np.random.default_rng(3)
    path = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(path, "JPEG", quality=95)
    return str(path)


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def _fail(client, image_id: str, photo: str) -> mediaq.JobError:
    with pytest.raises(mediaq.JobError) as info:
        await client.result(await client.enqueue_job("create_thumbnail", image_id, photo), timeout=60)
    return info.value


async def test_full_disk_gives_storage_full_and_no_partial_file(settings, client, start_worker, tmpfs, photo):
    storage = tmpfs / "media"
    worker = start_worker(storage=storage)
    ok = await client.result(await client.enqueue_job("create_thumbnail", "fits", photo), timeout=60)
    thumbs = storage / "thumbs"
    assert files(thumbs) == ["fits.jpg"] and ok["bytes"] > 8192
    st = os.statvfs(tmpfs)
    filler = tmpfs / "filler"
    with open(filler, "wb") as f:  # leave less room than one thumbnail
        f.write(b"\0" * (st.f_bavail * st.f_frsize - 8192))

    err = await _fail(client, "too-big", photo)
    assert err.code == "storage_full" and "no space left" in err.message, err
    assert err.details["path"] == str(thumbs / "too-big.jpg")
    assert files(thumbs) == ["fits.jpg"]  # no partial target, no temporary file
    assert Image.open(thumbs / "fits.jpg").size == (ok["width"], ok["height"])  # the old output is intact

    # the operator frees space; the failed job is retried and succeeds; the worker never stopped
    filler.unlink()
    again = await client.result(await client.enqueue_job("create_thumbnail", "too-big", photo,
                                                         _job_id="too-big-again"), timeout=60)
    assert again["bytes"] > 8192 and files(thumbs) == ["fits.jpg", "too-big.jpg"]
    assert worker.alive


async def test_full_disk_before_the_folder_exists(settings, client, start_worker, tmpfs, photo):
    storage = tmpfs / "media"
    storage.mkdir()
    st = os.statvfs(tmpfs)
    with open(tmpfs / "filler", "wb") as f:
        try:
            f.write(b"\0" * (st.f_bavail * st.f_frsize))
        except OSError:
            pass
    start_worker(storage=storage)
    err = await _fail(client, "nowhere", photo)
    assert err.code == "storage_full", err
    assert files(storage) in ([], ["thumbs"]) and files(storage / "thumbs") == []


async def test_read_only_folder_gives_storage_read_only_and_keeps_old_files(settings, client, start_worker, tmpfs,
                                                                          photo):
    storage = tmpfs / "media"
    worker = start_worker(storage=storage)
    first = await client.result(await client.enqueue_job("create_thumbnail", "old", photo), timeout=60)
    old_bytes = Path(first["path"]).read_bytes()
    remount(tmpfs, "ro")
    try:
        for image_id in ("old", "new"):  # an existing output and a new one
            err = await _fail(client, image_id, photo)
            assert err.code == "storage_read_only" and "read-only" in err.message, err
        assert Path(first["path"]).read_bytes() == old_bytes
        assert files(storage / "thumbs") == ["old.jpg"]
        # a variant into a folder that does not exist yet: the mkdir is refused the same way
        with pytest.raises(mediaq.JobError) as info:
            await client.result(await client.enqueue_job("create_variant", "old", photo, "medium", edge=100),
                                timeout=60)
        assert info.value.code == "storage_read_only"
    finally:
        remount(tmpfs, "rw")
    assert worker.alive
    again = await client.result(await client.enqueue_job("create_thumbnail", "new", photo, _job_id="new-again"),
                                timeout=60)
    assert Path(again["path"]).exists() and files(storage / "thumbs") == ["new.jpg", "old.jpg"]
