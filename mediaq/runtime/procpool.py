"""The worker's process pool: CPU-bound calls in child processes, dispatched from the event loop.

:class:`ProcessPool` is what ``concurrent.futures.ProcessPoolExecutor`` is to a job (a pickled
call runs in one of N processes, its result or exception comes back), without the executor's
threads. ``ProcessPoolExecutor`` hands every call from the event loop to a manager thread, then to
a feeder thread that writes the pipe, and every result back the same way: four thread wake-ups and
a self-pipe write a call. Here each child has one socket; the event loop writes a call to an idle
child's socket and reads the result when the socket is readable. On 8 ms calls with both cores busy
in the pool, the worker's main process spends 0.07 ms a call against the executor's 0.31 ms
(``benchmarks/bench_pool.py``, side by side).

What stays as with ``ProcessPoolExecutor``, since :func:`~mediaq.runtime.jobspec.run_cpu` and its
callers depend on it:

============================  ====================================================================
calls and results             pickled (protocol 5); a callable is pickled by reference, so the
                              child imports its module; an exception keeps its type and
                              arguments, with the child's traceback as ``__cause__``
start method                  ``forkserver`` (``spawn`` where there is none): see
                              :func:`~mediaq.runtime.jobspec.make_process_pool`
a child dies mid-call         the call's future raises ``BrokenProcessPool``
                              (``run_cpu`` turns it into a transient job error: retried)
a cancelled call              a queued one never runs (as the executor's)
``shutdown(wait)``             children exit when their socket closes; ``wait`` joins them
``submit`` / ``map``          the ``Executor`` interface, from the event loop's thread
============================  ====================================================================

What differs, on purpose:

* a dead child breaks only its own call, not the pool; it is replaced the next time a call needs a
  process (so a child that dies while idle is not restarted in a loop);
* a *running* call that is cancelled (its job timed out or was aborted) has its child killed, and
  the next call gets a new one. The executor cannot stop a running call: a runaway decode would
  keep its core busy after its job had ended, and every later job would wait behind it. A child
  killed mid-write leaves only a temporary file (outputs are written atomically), which the
  worker's janitor removes.

>>> import asyncio, math
>>> async def main():
...     with ProcessPool(1) as pool:
...         return await pool.run(math.factorial, 10)
>>> asyncio.run(main())
3628800
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import traceback
from collections.abc import Callable
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

__all__ = ["BrokenProcessPool", "ProcessPool", "RemoteTraceback"]

_HEADER = struct.Struct("!Q")  # the length of the pickled frame that follows
_READ_SIZE = 1 << 18
_JOIN_TIMEOUT = 10.0  # shutdown(wait=True): how long a child may take to finish its call and exit


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a pool process (the ``__cause__`` of the one re-raised)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class _Child:
    __slots__ = ("buffer", "call", "process", "sock")

    def __init__(self, process: Any, sock: socket.socket) -> None:
        self.process, self.sock = process, sock
        self.buffer = bytearray()
        self.call: asyncio.Future[Any] | None = None  # the call it runs, None when idle


class ProcessPool(Executor):
    """``processes`` child processes running pickled calls for one event loop (see the module).

    ``initializer`` runs in each child before its first call. Children start at once; the pool binds
    to the running event loop on its first call.
    """

    def __init__(self, processes: int, *, mp_context: Any = None, initializer: Callable[[], Any] | None = None) -> None:
        if processes < 1:
            raise ValueError(f"processes={processes!r} must be >= 1")
        self.processes = processes
        self._mp = mp_context or multiprocessing.get_context()
        self._initializer = initializer
        self._children: list[_Child] = []
        self._idle: list[_Child] = []
        self._queued: collections.deque[tuple[bytes, asyncio.Future[Any]]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._sending: set[asyncio.Future[None]] = set()  # the rest of large calls, being written
        self._started = 0  # processes started over the pool's life (replacements included)
        for _ in range(processes):
            self._idle.append(self._start())

    def __repr__(self) -> str:
        busy = sum(1 for c in self._children if c.call is not None)
        state = "closed" if self._closed else f"busy={busy} idle={len(self._idle)} queued={len(self._queued)}"
        return f"<ProcessPool processes={self.processes} {state} started={self._started}>"

    # -- calls ------------------------------------------------------------------------------------
    def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """``fn(*args, **kwargs)`` in a child process; await the returned future for its result.
        Call it from the event loop's thread."""
        if self._closed:
            raise RuntimeError("cannot run a call on a pool that is shut down")
        loop = self._bind()
        call = functools.partial(fn, *args, **kwargs) if args or kwargs else fn
        payload = pickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL)  # unpicklable: raises here, in the caller
        future = loop.create_future()
        self._queued.append((_HEADER.pack(len(payload)) + payload, future))
        self._dispatch()
        return future

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """The ``Executor`` interface (``loop.run_in_executor(pool, ...)`` works), from the event
        loop's thread; :meth:`run` is the same without the thread-safe ``Future`` in between."""
        outer: Future[Any] = Future()
        inner = self.run(fn, *args, **kwargs)

        def copy(done: asyncio.Future[Any]) -> None:
            if done.cancelled():
                outer.cancel()
            elif (exc := done.exception()) is not None:
                outer.set_exception(exc)
            else:
                outer.set_result(done.result())

        def cancel(f: Future[Any]) -> None:
            if f.cancelled() and not inner.done():
                inner.get_loop().call_soon_threadsafe(inner.cancel)

        inner.add_done_callback(copy)
        outer.add_done_callback(cancel)
        outer.set_running_or_notify_cancel()
        return outer

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking calls. Queued calls that have not started are cancelled whatever
        ``cancel_futures`` says (unlike the executor's: the loop that would hand them out may be
        gone); running ones end with ``BrokenProcessPool`` here while their child finishes the work.
        Children exit once their current call is done; ``wait`` joins them (and kills any that take
        longer than 10 s)."""
        if self._closed:
            return
        self._closed = True
        while self._queued:
            self._queued.popleft()[1].cancel()
        processes = [child.process for child in self._children]
        for child in list(self._children):
            self._close(child, BrokenProcessPool("the pool was shut down while this call ran"), quiet=True)
        if wait:
            for process in processes:
                process.join(_JOIN_TIMEOUT)
                if process.is_alive():
                    process.kill()
                    process.join(1.0)

    # -- inside -----------------------------------------------------------------------------------
    def _start(self) -> _Child:
        ours, theirs = socket.socketpair()
        process = self._mp.Process(target=_child_main, args=(theirs, self._initializer), daemon=True,
                                   name=f"mediaq-pool-{self._started}")
        process.start()
        theirs.close()  # the child's end lives in the child only: its exit is our end's EOF
        ours.setblocking(False)
        child = _Child(process, ours)
        self._children.append(child)
        self._started += 1
        if self._loop is not None:
            self._loop.add_reader(ours.fileno(), self._readable, child)
        return child

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            for child in self._children:
                loop.add_reader(child.sock.fileno(), self._readable, child)
        elif loop is not self._loop:
            raise RuntimeError("a ProcessPool serves the event loop of its first call only")
        return loop

    def _dispatch(self) -> None:
        while self._queued:
            frame, future = self._queued[0]
            if future.done():  # cancelled while queued: never runs
                self._queued.popleft()
                continue
            if self._idle:
                child = self._idle.pop()
            elif len(self._children) < self.processes and not self._closed:
                child = self._start()  # replaces a process that died
            else:
                return
            self._queued.popleft()
            child.call = future
            future.add_done_callback(functools.partial(self._call_done, child))
            try:
                sent = child.sock.send(frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._close(child, self._lost(child))
                continue
            if sent < len(frame):  # a large call: the rest as the child reads it
                task = asyncio.ensure_future(self._send_rest(child, memoryview(frame)[sent:]), loop=self._loop)
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)

    def _call_done(self, child: _Child, future: asyncio.Future[Any]) -> None:
        """A running call cancelled by its caller: stop its child (see the module doc)."""
        if future.cancelled() and child.call is future:
            child.call = None
            child.process.kill()
            self._close(child, None)
            self._dispatch()

    async def _send_rest(self, child: _Child, rest: memoryview) -> None:
        try:
            await self._loop.sock_sendall(child.sock, rest)  # type: ignore[union-attr]
        except OSError:
            if child in self._children:
                self._close(child, self._lost(child))

    def _readable(self, child: _Child) -> None:
        try:
            chunk = child.sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:  # EOF: the child is gone
            self._close(child, self._lost(child))
            self._dispatch()
            return
        buf = child.buffer
        buf += chunk
        while len(buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buf)
            if len(buf) < _HEADER.size + size:
                break
            frame = bytes(buf[_HEADER.size : _HEADER.size + size])
            del buf[: _HEADER.size + size]
            self._answer(child, frame)

    def _answer(self, child: _Child, frame: bytes) -> None:
        future, child.call = child.call, None
        if self._closed:
            self._close(child, None)
        else:
            self._idle.append(child)
        if future is not None and not future.done():
            try:
                ok, value, tb = pickle.loads(frame)
            except Exception as exc:  # e.g. an exception type whose __init__ cannot take its own args
                ok, value, tb = False, RuntimeError(f"could not read a pool process's answer: {exc!r}"), None
            if ok:
                future.set_result(value)
            else:
                if tb:
                    value.__cause__ = RemoteTraceback(tb)
                future.set_exception(value)
        self._dispatch()

    def _lost(self, child: _Child) -> BrokenProcessPool:
        child.process.join(0.05)
        code = child.process.exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        if code is None:
            how = "closed its connection"
        return BrokenProcessPool(f"pool process {child.process.pid} {how} with a call sent to it")

    def _close(self, child: _Child, error: BaseException | None, *, quiet: bool = False) -> None:
        """Forget ``child`` and close its socket; its call, if any, fails with ``error`` (``quiet``:
        no "exception was never retrieved" log when nobody awaits it any more, as at shutdown)."""
        if child in self._children:
            self._children.remove(child)
        if child in self._idle:
            self._idle.remove(child)
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(child.sock.fileno())
        child.sock.close()
        future, child.call = child.call, None
        if future is not None and not future.done() and error is not None:
            future.set_exception(error)
            if quiet:
                future.exception()  # marks it retrieved


def _child_main(sock: socket.socket, initializer: Callable[[], Any] | None) -> None:
    """A pool process: read a pickled call, run it, write back ``(ok, value, traceback)``; exit at EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the worker, which shuts the pool down
    sock.setblocking(True)
    if initializer is not None:
        initializer()
    reader = sock.makefile("rb")
    while True:
        header = reader.read(_HEADER.size)
        if len(header) < _HEADER.size:
            os._exit(0)
        payload = reader.read(_HEADER.unpack(header)[0])
        try:
            answer = (True, pickle.loads(payload)(), None)
        except BaseException as exc:  # every failure goes back to the caller
            answer = (False, exc, "".join(traceback.format_exception(exc)))
        try:
            frame = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an unpicklable result or exception
            what = "result" if answer[0] else f"exception {answer[1]!r}"
            frame = pickle.dumps((False, TypeError(f"the call's {what} cannot be pickled: {exc!r}"), answer[2]),
                                 protocol=pickle.HIGHEST_PROTOCOL)
        try:
            sock.sendall(_HEADER.pack(len(frame)) + frame)
        except OSError:  # the worker closed the pool
            os._exit(0)
