"""arq job and result records as pandas DataFrames, fetched in pipelined chunks.

One row per job: ``job_id, function, batch, <arguments by name>, status, success, tries,
enqueue_time, start_time, finish_time`` (datetime64, UTC), ``queue_seconds, run_seconds``, the
result's fields as columns (a dict result is flattened; a name that clashes with a column above gets
a ``result_`` prefix; a scalar result is the ``result`` column), then ``error_type, error_code,
error_message, traceback``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pandas as pd
from arq.constants import job_key_prefix, result_key_prefix

from mediaq.errors import JobError

__all__ = ["BASE_COLUMNS", "fetch_records", "records_frame"]

BASE_COLUMNS = ["job_id", "function", "batch", "status", "success", "tries", "enqueue_time", "start_time",
                "finish_time", "queue_seconds", "run_seconds"]
ERROR_COLUMNS = ["error_type", "error_code", "error_message", "traceback"]
_TIME_COLUMNS = ("enqueue_time", "start_time", "finish_time")


async def fetch_records(redis: Any, ids: Sequence[str], loads: Callable[[bytes], Any],
                        chunk: int = 2000) -> list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]]:
    """``(job_id, result_record, job_record)`` per id; the job record only where there is no result."""
    out = []
    per_trip = chunk * 8  # several MGETs per round trip
    for trip in range(0, len(ids), per_trip):
        part = ids[trip:trip + per_trip]
        async with redis.pipeline(transaction=False) as pipe:
            for start in range(0, len(part), chunk):
                pipe.mget([result_key_prefix + i for i in part[start:start + chunk]])
            raw_results = [raw for reply in await pipe.execute() for raw in reply]
        missing = [i for i, r in zip(part, raw_results, strict=True) if r is None]
        raw_jobs = {}
        if missing:
            raw_jobs = dict(zip(missing, await redis.mget([job_key_prefix + i for i in missing]), strict=True))
        for job_id, raw in zip(part, raw_results, strict=True):
            result = _safe_loads(loads, raw)
            job = _safe_loads(loads, raw_jobs.get(job_id)) if raw is None else None
            out.append((job_id, result, job))
    return out


def _safe_loads(loads: Callable[[bytes], Any], raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = loads(raw)
    except Exception as exc:  # a malformed or foreign record: show it, don't fail the frame
        return {"s": False, "r": JobError("mediaq.UnreadableRecord", f"cannot decode the record: {exc}")}
    return value if isinstance(value, dict) else {"s": False, "r": JobError("mediaq.UnreadableRecord",
                                                                           "record is not a map")}


def _arg_names(function: str, n_args: int, signatures: dict[str, inspect.Signature]) -> list[str]:
    sig = signatures.get(function)
    if sig is not None:
        params = [p.name for p in list(sig.parameters.values())[1:]  # skip ctx
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(params) >= n_args:
            return params[:n_args]
    return [f"arg{i}" for i in range(n_args)]


def records_frame(
    records: Iterable[tuple[str, dict[str, Any] | None, dict[str, Any] | None]],
    *,
    statuses: dict[str, str] | None = None,
    batch: str | None = None,
    extra: dict[str, dict[str, Any]] | None = None,
    signatures: dict[str, inspect.Signature] | None = None,
) -> pd.DataFrame:
    """Build the jobs DataFrame from ``fetch_records`` output. ``extra`` adds columns per job id."""
    signatures = signatures or {}
    statuses = statuses or {}
    # columns built directly (a dict of lists): pandas converts that far faster than a list of row dicts
    fixed = ["job_id", "function", "batch", "enqueue_time", "status", "success", "tries", "start_time",
             "finish_time", "error_type", "error_code", "error_message", "traceback"]
    cols: dict[str, list[Any]] = {name: [] for name in fixed}
    arg_cols: dict[str, None] = {}  # ordered sets of column names
    result_cols: dict[str, None] = {}
    sparse: dict[str, list[Any]] = {}  # argument and result columns, padded with None
    names_cache: dict[tuple[str, int], list[str]] = {}
    n = 0

    def put(name: str, value: Any) -> None:
        column = sparse.get(name)
        if column is None:
            column = sparse[name] = [None] * n
        column.append(value)

    for job_id, result, job in records:
        rec = result or job or {}
        function = rec.get("f") or ""
        args = rec.get("a") or []
        names = names_cache.get((function, len(args)))
        if names is None:
            names = names_cache[(function, len(args))] = _arg_names(function, len(args), signatures)
        arguments = dict(zip(names, args, strict=True))
        if rec.get("k"):
            arguments.update(rec["k"])
        for key, value in arguments.items():
            if key not in arg_cols:
                arg_cols[key] = None
            put(key, value)
        cols["job_id"].append(job_id)
        cols["function"].append(function or None)
        cols["batch"].append(batch)
        cols["enqueue_time"].append(rec.get("et"))
        err = None
        if result is not None:
            success = bool(result.get("s"))
            cols["status"].append("complete" if success else "failed")
            cols["success"].append(success)
            cols["tries"].append(result.get("t"))
            cols["start_time"].append(result.get("st"))
            cols["finish_time"].append(result.get("ft"))
            value = result.get("r")
            if success:
                fields = value if isinstance(value, dict) else {"result": value}
                for key, v in fields.items():
                    col = f"result_{key}" if key in arguments or key in BASE_COLUMNS else key
                    if col not in result_cols:
                        result_cols[col] = None
                    put(col, v)
            else:
                err = value if isinstance(value, JobError) else JobError(type(value).__name__, str(value))
        else:
            cols["status"].append(statuses.get(job_id, "queued" if job else "not_found"))
            cols["success"].append(None)
            cols["tries"].append(job.get("t") if job else None)
            cols["start_time"].append(None)
            cols["finish_time"].append(None)
        cols["error_type"].append(err.type if err else None)
        cols["error_code"].append(err.code if err else None)
        cols["error_message"].append(err.message if err else None)
        cols["traceback"].append(err.traceback if err else None)
        n += 1
        for column in sparse.values():  # pad the columns this record did not have
            if len(column) < n:
                column.append(None)
    df = pd.DataFrame({**cols, **sparse})
    if extra:
        for key in dict.fromkeys(k for values in extra.values() for k in values):
            result_cols.setdefault(key, None)
            df[key] = df["job_id"].map(lambda i, key=key: extra.get(i, {}).get(key))
    for col in BASE_COLUMNS + ERROR_COLUMNS:
        if col not in df.columns:
            df[col] = None
    for col in _TIME_COLUMNS:
        # arq stores times as epoch milliseconds
        df[col] = pd.to_datetime(pd.to_numeric(df[col], errors="coerce"), unit="ms", utc=True).astype(
            "datetime64[ns, UTC]")
    df["queue_seconds"] = (df["start_time"] - df["enqueue_time"]).dt.total_seconds()
    df["run_seconds"] = (df["finish_time"] - df["start_time"]).dt.total_seconds()
    df["success"] = df["success"].astype("boolean")
    df["tries"] = pd.to_numeric(df["tries"], errors="coerce").astype("Int64")
    for col in ("job_id", "status", "function", "batch", *ERROR_COLUMNS):
        df[col] = df[col].astype("string")
    order = BASE_COLUMNS[:3] + list(arg_cols) + BASE_COLUMNS[3:] + list(result_cols) + ERROR_COLUMNS
    return df[list(dict.fromkeys(order))]
