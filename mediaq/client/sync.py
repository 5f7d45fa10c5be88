"""Sync faces of the async API, for plain scripts and for notebook cells that prefer no ``await``.

Coroutines run on one private event loop in a daemon thread, so a sync call works the same in a
script and inside a running Jupyter kernel (no ``asyncio.run`` in a running loop, no patching of
the kernel's loop). Objects made on that loop (clients, batches) are used only through it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["SyncProxy", "run_sync"]

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="mediaq-sync-loop", daemon=True).start()
            _loop = loop
        return _loop


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` to completion from sync code (also inside a running event loop) and return its result."""
    future = asyncio.run_coroutine_threadsafe(coro, _background_loop())
    try:
        return future.result(timeout)
    except KeyboardInterrupt:
        future.cancel()
        raise


class SyncProxy:
    """Mirror of an async mediaq object: every coroutine method becomes a blocking call.

    >>> client = mediaq.connect_sync()                       # doctest: +SKIP
    >>> batch = client.enqueue_many("noop", range(10))       # doctest: +SKIP
    >>> batch.wait(progress=False)                           # doctest: +SKIP
    """

    def __init__(self, target: Any) -> None:
        object.__setattr__(self, "_target", target)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if asyncio.iscoroutinefunction(attr):
            def call(*args: Any, **kwargs: Any) -> Any:
                return _wrap(run_sync(attr(*args, **kwargs)))

            call.__doc__ = attr.__doc__
            call.__name__ = name
            return call
        if callable(attr) and name in _WRAP_RESULT_OF:
            return lambda *args, **kwargs: _wrap(attr(*args, **kwargs))
        return attr

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._target)))

    def __repr__(self) -> str:
        return f"<sync {self._target!r}>"

    def __len__(self) -> int:
        return len(self._target)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        close = getattr(self._target, "close", None)
        if close is not None:
            run_sync(close())


_WRAP_RESULT_OF = {"batch"}


def _wrap(value: Any) -> Any:
    from mediaq.client.batch import Batch
    from mediaq.client.connection import Client

    return SyncProxy(value) if isinstance(value, (Batch, Client)) else value
