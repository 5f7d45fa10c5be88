"""How jobs and results are written to Redis.

mediaq's default is **msgpack**: decoding it can never run code, unlike arq's default pickle, with
which anyone who can write to Redis runs code in every worker and notebook that reads the record.
Exceptions become a small map (type, message, traceback, code, details) and come back on the
client as one :class:`~mediaq.errors.JobError` that carries them. Datetimes survive as UTC
timestamps; tuples and sets come back as lists; ``Path`` as ``str``.

``pickle`` mode is arq's own format, for sharing a queue with stock arq clients (trusted networks only).

>>> from mediaq.runtime.serialization import get_serializer
>>> dumps, loads = get_serializer("msgpack")
>>> loads(dumps({"f": "create_thumbnail", "a": [1], "k": {}}))
{'f': 'create_thumbnail', 'a': [1], 'k': {}}
"""

from __future__ import annotations

import asyncio
import datetime as dt
import pickle
import traceback as tb
from collections.abc import Callable
from decimal import Decimal
from pathlib import PurePath
from typing import Any

import msgpack

from mediaq.errors import ConfigError, JobError

__all__ = ["ABORTED_TYPE", "exception_to_dict", "get_serializer", "msgpack_dumps", "msgpack_loads", "result_outcome"]

#: The error type of a job aborted by ``batch.abort()`` / ``Job.abort()`` (arq fails it with CancelledError).
ABORTED_TYPE = "asyncio.CancelledError"


def result_outcome(record: dict[str, Any]) -> str:
    """``"complete"``, ``"failed"`` or ``"aborted"`` for a result record (either serializer).

    >>> result_outcome({"s": False, "r": asyncio.CancelledError()})
    'aborted'
    """
    if record.get("s"):
        return "complete"
    err = record.get("r")
    if isinstance(err, asyncio.CancelledError) or getattr(err, "type", None) == ABORTED_TYPE:
        return "aborted"
    return "failed"

_EXC_EXT = 1  # msgpack extension type code for an exception record


def exception_to_dict(exc: BaseException) -> dict[str, Any]:
    """A failed job's exception as plain data: type, message, traceback, code, details."""
    if isinstance(exc, JobError):  # already remote: keep what the worker saw
        return {"type": exc.type, "message": exc.message, "traceback": exc.traceback,
                "code": exc.code, "details": exc.details}
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"
    if isinstance(exc, asyncio.CancelledError):
        name, message = "asyncio.CancelledError", str(exc) or "job aborted"
    else:
        message = getattr(exc, "message", None) or str(exc)
    trace = "".join(tb.format_exception(exc)) if exc.__traceback__ is not None else ""
    details = getattr(exc, "details", None)
    return {
        "type": name,
        "message": str(message),
        "traceback": trace,
        "code": getattr(exc, "code", None) if isinstance(getattr(exc, "code", None), str) else None,
        "details": _plain(details) if isinstance(details, dict) else {},
    }


def _plain(value: Any) -> Any:
    """Best effort to plain msgpack-able data (for exception details)."""
    try:
        msgpack.packb(value, default=_default)
        return value
    except Exception:
        return repr(value)


def _default(obj: Any) -> Any:
    if isinstance(obj, BaseException):
        return msgpack.ExtType(_EXC_EXT, msgpack.packb(exception_to_dict(obj), default=_default))
    if isinstance(obj, dt.datetime):
        if obj.tzinfo is None:  # naive means local time, as in arq
            obj = obj.astimezone()
        return obj
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (dt.date, dt.time)):
        return obj.isoformat()
    if isinstance(obj, Decimal):
        return float(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / pandas scalars
        return obj.item()
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays
        return obj.tolist()
    raise TypeError(f"cannot serialize {type(obj).__name__!r} with msgpack; pass plain data "
                    "(str, int, float, bool, None, lists and dicts of them)")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXC_EXT:
        d = msgpack.unpackb(data, raw=False, timestamp=3, strict_map_key=False)
        return JobError(d.get("type", "Exception"), d.get("message", ""), d.get("traceback", ""),
                        d.get("code"), d.get("details") or {})
    return msgpack.ExtType(code, data)


def msgpack_dumps(obj: Any) -> bytes:
    """Serialize a job or result record with msgpack (datetimes as timestamps, exceptions as maps).

    In a result record the success flag ``s`` is written first, so its 4th byte tells success
    (``0xc3``) from failure (``0xc2``): batch status reads 4 bytes per result, not the whole record.
    The result ``r`` comes next, so a failure's error type (an aborted job's is
    :data:`ABORTED_TYPE`) is within its first 64 bytes.
    """
    if isinstance(obj, dict) and "s" in obj and "r" in obj:
        obj = {"s": obj["s"], "r": obj["r"], **{k: v for k, v in obj.items() if k not in ("s", "r")}}
    return msgpack.packb(obj, default=_default, use_bin_type=True, datetime=True)


#: First bytes of a msgpack result record (fixmap header, then key "s" = a1 73, then true/false).
RESULT_OK_BYTE, RESULT_FAILED_BYTE = 0xC3, 0xC2


def msgpack_loads(data: bytes) -> Any:
    """Inverse of :func:`msgpack_dumps`. Never executes anything: a pickle payload is just refused."""
    return msgpack.unpackb(data, raw=False, ext_hook=_ext_hook, timestamp=3, strict_map_key=False)


def get_serializer(name: str) -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    """``(dumps, loads)`` for ``"msgpack"`` or ``"pickle"``, as arq's ``job_serializer``/``job_deserializer``."""
    if name == "msgpack":
        return msgpack_dumps, msgpack_loads
    if name == "pickle":
        return pickle.dumps, pickle.loads
    raise ConfigError(f"unknown serializer {name!r}: use 'msgpack' (safe, default) or 'pickle' (arq-compatible)")
