"""The local store: safe names and folders, atomic writes, leftovers of killed writers, full/read-only disks."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mediaq.errors import PermanentJobError, TransientJobError
from mediaq.runtime.storage import local as storage_module
from mediaq.runtime.storage.layout import validate_image_id
from mediaq.runtime.storage.local import LocalStore, sweep_abandoned


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# -- names ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("image_id", ["a", "42", "post-123_a.b", "A" * 128, "sub__name", "x.y-z_0"])
def test_good_ids(image_id):
    assert validate_image_id(image_id) == image_id


def test_int_ids_are_accepted_as_in_the_seed():
    assert validate_image_id(42) == "42"
    assert LocalStore("/srv/m").output_location("thumbnail", 42, "jpg") == "/srv/m/thumbs/42.jpg"


@pytest.mark.parametrize("image_id", [
    "", "..", "a..b", "../x", "../../etc/passwd", "/etc/passwd", "/abs", "a/b", "a\\b", ".hidden", "-x", "_x",
    "A" * 129, "a\x00b", "é", "a b", "a\nb", None, True, -1, 3.5, ["a"], b"abc",
])
def test_bad_ids_are_refused(image_id):
    with pytest.raises(PermanentJobError) as info:
        validate_image_id(image_id)
    assert info.value.code == "bad_argument" and info.value.details["argument"] == "image_id"


@pytest.mark.parametrize(("folder", "ext"), [("../x", "jpg"), ("thumbs/..", "jpg"), ("/tmp", "jpg"), ("", "jpg"),
                                             ("thumbs", "../jpg"), ("thumbs", "j/g"), ("thumbs", "")])
def test_bad_folders_and_extensions_are_refused(tmp_path, folder, ext):
    with pytest.raises(PermanentJobError) as info:
        LocalStore(tmp_path).write(f"{folder}/x.{ext}", b"data")
    assert info.value.code == "bad_argument"
    assert list(tmp_path.rglob("*")) == [] or all(p.is_dir() for p in tmp_path.rglob("*"))


# -- writing ----------------------------------------------------------------------------------------
def test_write_creates_folders_and_leaves_no_temporary_file(tmp_path):
    store = LocalStore(tmp_path / "media")
    path = Path(store.write("thumbs/img1.jpg", b"hello"))
    assert path == tmp_path / "media" / "thumbs" / "img1.jpg"
    assert path.read_bytes() == b"hello"
    assert leftovers(path.parent) == []


def test_rewrite_replaces_and_same_bytes_give_the_same_file(tmp_path):
    store = LocalStore(tmp_path)
    store.write("thumbs/a.jpg", b"one")
    path = Path(store.write("thumbs/a.jpg", b"two"))
    assert path.read_bytes() == b"two"
    again = Path(store.write("thumbs/a.jpg", b"two"))
    assert again == path and again.read_bytes() == b"two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.jpg"]


def test_readers_never_see_a_partial_file(tmp_path):
    store = LocalStore(tmp_path)
    contents = [b"a" * 300_000, b"b" * 300_000]
    path = Path(store.write("thumbs/x.bin", contents[0]))
    seen: set[bytes] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            data = path.read_bytes()
            seen.add(data[:1] + str(len(data)).encode() + data[-1:])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(40):
            store.write("thumbs/x.bin", contents[i % 2])
    finally:
        stop.set()
        reader.join()
    assert seen <= {b"a300000a", b"b300000b"}


def test_remove(tmp_path):
    store = LocalStore(tmp_path)
    store.write("medium/x.jpg", b"1")
    assert store.remove("medium/x.jpg") is True
    assert store.remove("medium/x.jpg") is False
    assert not (tmp_path / "medium" / "x.jpg").exists()


# -- escaping the root ------------------------------------------------------------------------------
def test_symlinked_folder_pointing_outside_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "media"
    root.mkdir()
    (root / "thumbs").symlink_to(outside)
    with pytest.raises(PermanentJobError) as info:
        LocalStore(root).write("thumbs/x.jpg", b"data")
    assert info.value.code == "unsafe_path" and "outside the storage root" in info.value.message
    assert list(outside.iterdir()) == []


def test_symlinked_folder_via_relative_dotdot_is_refused(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "thumbs").symlink_to("../elsewhere")
    with pytest.raises(PermanentJobError) as info:
        LocalStore(root).write("thumbs/x.jpg", b"data")
    assert info.value.code == "unsafe_path"
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_symlinked_folder_inside_the_root_is_fine(tmp_path):
    root = tmp_path / "media"
    (root / "disk2").mkdir(parents=True)
    (root / "thumbs").symlink_to(root / "disk2")
    path = Path(LocalStore(root).write("thumbs/x.jpg", b"data"))
    assert (root / "disk2" / "x.jpg").read_bytes() == b"data" and path == root / "thumbs" / "x.jpg"


def test_root_itself_may_be_a_symlink(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    LocalStore(tmp_path / "link").write("thumbs/x.jpg", b"data")
    assert (tmp_path / "real" / "thumbs" / "x.jpg").read_bytes() == b"data"


def test_dangling_folder_symlink_is_refused(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    (root / "thumbs").symlink_to(tmp_path / "gone")
    with pytest.raises(PermanentJobError) as info:
        LocalStore(root).write("thumbs/x.jpg", b"data")
    assert info.value.code == "unsafe_path"
    assert not (tmp_path / "gone").exists()


def test_a_file_where_the_folder_should_be_is_refused(tmp_path):
    (tmp_path / "thumbs").write_text("not a folder")
    with pytest.raises(PermanentJobError) as info:
        LocalStore(tmp_path).write("thumbs/x.jpg", b"data")
    assert info.value.code == "unsafe_path"


def test_target_symlink_is_replaced_not_followed(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("keep me")
    root = tmp_path / "media"
    (root / "thumbs").mkdir(parents=True)
    (root / "thumbs" / "x.jpg").symlink_to(secret)
    path = Path(LocalStore(root).write("thumbs/x.jpg", b"thumbnail"))
    assert secret.read_text() == "keep me"
    assert not path.is_symlink() and path.read_bytes() == b"thumbnail"


# -- failures mid-write -----------------------------------------------------------------------------
def test_error_after_a_partial_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    path = Path(store.write("thumbs/x.jpg", b"old content"))
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage_module.os, "write", half_then_full)
    with pytest.raises(PermanentJobError) as info:
        store.write("thumbs/x.jpg", b"n" * 100_000)
    monkeypatch.undo()
    assert info.value.code == "storage_full" and "no space" in info.value.message
    assert path.read_bytes() == b"old content"
    assert leftovers(path.parent) == []


def test_fsync_failure_is_transient_and_cleans_up(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)

    def eio(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(storage_module.os, "fsync", eio)
    with pytest.raises(TransientJobError) as info:
        store.write("thumbs/x.jpg", b"data")
    monkeypatch.undo()
    assert info.value.code == "storage_io_error"
    assert list((tmp_path / "thumbs").iterdir()) == []


@pytest.mark.parametrize(("code", "expected"), [(errno.EACCES, "storage_denied"), (errno.EPERM, "storage_denied"),
                                                (errno.EROFS, "storage_read_only"), (errno.EDQUOT, "storage_full")])
def test_error_codes_by_errno(tmp_path, monkeypatch, code, expected):
    """Injected at the temporary file's creation (root ignores permissions, so EACCES cannot be real here)."""
    store = LocalStore(tmp_path)
    store.folder("thumbs")
    real_open = os.open

    def fake_open(name, flags, *args, **kw):
        if flags & os.O_CREAT:
            raise OSError(code, os.strerror(code))
        return real_open(name, flags, *args, **kw)

    monkeypatch.setattr(storage_module.os, "open", fake_open)
    with pytest.raises(PermanentJobError) as info:
        store.write("thumbs/x.jpg", b"data")
    assert info.value.code == expected


@pytest.fixture
def tmpfs(mount_tmpfs):
    """A real 64 KiB tmpfs (needs root and mount rights; skipped with the reason otherwise)."""
    return mount_tmpfs("64k")


def test_real_full_disk(tmpfs):
    store = LocalStore(tmpfs / "media")
    old = Path(store.write("thumbs/x.jpg", b"old"))
    with pytest.raises(PermanentJobError) as info:
        store.write("thumbs/x.jpg", b"z" * 200_000)
    assert info.value.code == "storage_full"
    assert old.read_bytes() == b"old" and leftovers(old.parent) == []


def test_real_read_only_disk(tmpfs):
    store = LocalStore(tmpfs / "media")
    store.folder("thumbs")
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    with pytest.raises(PermanentJobError) as info:
        store.write("thumbs/x.jpg", b"data")
    assert info.value.code == "storage_read_only" and "read-only" in info.value.message


KILLED_WRITER = textwrap.dedent("""
    import os, sys, time
    from mediaq.runtime.storage import local as storage
    real_write = os.write
    def stalled_write(fd, data):
        real_write(fd, bytes(data[:1000]))
        print("partial", flush=True)
        time.sleep(120)
    storage.os.write = stalled_write
    name = sys.argv[2] if len(sys.argv) > 2 else "x"
    storage.LocalStore(sys.argv[1]).write(f"thumbs/{name}.jpg", b"N" * 1_000_000)
""")


def test_writer_killed_mid_write_never_leaves_a_partial_target(tmp_path):
    root = tmp_path / "media"
    store = LocalStore(root)
    target = Path(store.write("thumbs/x.jpg", b"old"))
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(root)], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"partial\n"  # 1000 of 1,000,000 bytes are on disk
        (leftover,) = leftovers(target.parent)
        assert store.sweep(min_age=0) == []  # its writer is alive and holds the lock: kept
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert target.read_bytes() == b"old"  # never the partial content
    assert (target.parent / leftover).stat().st_size == 1000
    assert store.sweep(min_age=0) == [str(target.parent / leftover)]  # dead writer: lock free, removed
    store.write("thumbs/x.jpg", b"new")
    assert target.read_bytes() == b"new" and leftovers(target.parent) == []


def test_sweep_keeps_recent_leftovers(tmp_path):
    store = LocalStore(tmp_path, stale_after=900)
    folder = store.folder("thumbs")
    old, recent = folder / ".x.jpg.aaaa.tmp", folder / ".x.jpg.bbbb.tmp"
    old.write_bytes(b"1")
    recent.write_bytes(b"2")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert store.sweep() == [str(old)]
    assert leftovers(folder) == [recent.name]


def test_sweep_clears_old_leftovers_in_every_folder(tmp_path):
    store = LocalStore(tmp_path)
    for folder in ("thumbs", "medium"):
        f = store.folder(folder)
        (f / ".a.jpg.0001.tmp").write_bytes(b"x")
        (f / "a.jpg").write_bytes(b"keep")
    assert store.sweep(min_age=3600) == []
    removed = store.sweep(min_age=0)
    assert sorted(Path(p).parent.name for p in removed) == ["medium", "thumbs"]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.jpg", "a.jpg"]


def test_sweep_removes_only_files_whose_writer_died(tmp_path):
    """A live writer's temporary file (lock held) stays; a dead writer's one (lock free) goes."""
    root = tmp_path / "media"
    LocalStore(root).write("thumbs/a.jpg", b"ok")
    live = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(root), "live"], stdout=subprocess.PIPE)
    dead = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(root), "dead"], stdout=subprocess.PIPE)
    try:
        assert live.stdout.readline() == dead.stdout.readline() == b"partial\n"
        dead.send_signal(signal.SIGKILL)
        dead.wait(10)
        assert len(leftovers(root / "thumbs")) == 2
        assert sweep_abandoned(root, min_age=60) == []  # too recent: could be between create and lock
        removed = sweep_abandoned(root, min_age=0)
        assert [p.name.split(".")[1] for p in removed] == ["dead"]
        assert [name.split(".")[1] for name in leftovers(root / "thumbs")] == ["live"]
    finally:
        live.kill()
        live.wait(10)
        dead.stdout.close()
        live.stdout.close()
    assert (root / "thumbs" / "a.jpg").read_bytes() == b"ok"
