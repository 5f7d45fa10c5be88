"""The tests' shared helpers, one copy each: a free loopback port, waiting for a condition, stopping a
child process, parsing a source file, and small generated inputs (random ratings, a PNG header
claiming any size).

``eventually`` is the only way the tests wait: it polls until a condition holds and returns at once
when it does, so a slow (busy) machine only makes a test slower, never wrong; the timeout is a bound
for a broken run, never a sleep a test relies on.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["eventually", "eventually_sync", "free_port", "parse_source", "pid_gone", "png_header", "random_ratings",
           "stop_process"]


def pid_gone(pid: int) -> bool:
    """Whether no process has the id ``pid`` (any more)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def parse_source(path: Path) -> ast.Module:
    """``ast.parse`` of a file, proof against CPython 3.11.7's flaky ``SystemError: AST constructor
    recursion depth mismatch`` (seen after many tests ran in one process): it parses afresh in a
    new interpreter then."""
    source = Path(path).read_text(encoding="utf-8")
    try:
        return ast.parse(source, str(path))
    except SystemError:
        dumped = subprocess.run([sys.executable, "-c", "import ast, sys; print(ast.dump(ast.parse(sys.stdin.read())))"],
                                input=source, capture_output=True, text=True, check=True).stdout
        return eval(dumped, vars(ast))  # the dump of our own file, rebuilt as nodes


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, *, group: bool = False,
                 timeout: float = 20.0) -> None:
    """Ask a child process to stop with ``sig`` (its whole process group with ``group``: a worker and
    its pool, a server started with ``start_new_session``), wait ``timeout`` s, then SIGKILL it (the
    group) and reap it. A process that has already ended is only reaped."""
    if proc.poll() is not None:
        return

    def send(s: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # it ended in the meantime
            os.killpg(proc.pid, s) if group else proc.send_signal(s)

    send(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


async def eventually(read: Callable[[], Any], until: Callable[[Any], Any] = bool, *, timeout: float = 30.0,
                     interval: float = 0.05, what: str = "condition") -> Any:
    """Call ``read()`` (sync or async) every ``interval`` s until ``until(value)`` holds; return the value.

    After ``timeout`` s it fails with ``what`` and the last value read.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if inspect.isawaitable(value):
            value = await value
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout:g} s; last value: {value!r:.2000}")
        await asyncio.sleep(interval)


def eventually_sync(read: Callable[[], Any], until: Callable[[Any], Any] = bool, *, timeout: float = 30.0,
                    interval: float = 0.05, what: str = "condition") -> Any:
    """:func:`eventually` for code without an event loop (the browser tests)."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout:g} s; last value: {value!r:.2000}")
        time.sleep(interval)


def random_ratings(seed: int, images: int = 300, rows: int = 3000, *, id_format: str = "p{:04d}",
                   keep: str = "last") -> pd.DataFrame:
    """Ratings as an image board has them: a few images get most ratings (Pareto weights), scores
    1..10, one rating per (image, user) (``keep`` decides which of a repeated pair stays)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    weights = rng.pareto(1.2, images) + 0.02
    frame = pd.DataFrame({
        "image_id": [id_format.format(i) for i in rng.choice(images, size=rows, p=weights / weights.sum())],
        "user_id": rng.integers(1, 5000, rows),
        "score": rng.integers(1, 11, rows),
    })
    return frame.drop_duplicates(["image_id", "user_id"], keep=keep).reset_index(drop=True)


def png_header(width: int, height: int) -> bytes:
    """A small PNG file claiming ``width`` x ``height`` greyscale pixels (with almost no pixel data)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")
