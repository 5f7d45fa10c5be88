"""IQDB jobs: index a thumbnail, or remove an image, on the configured backend.

``Settings.iqdb_url`` is ``None``: the embedded index shared through Redis (queue database,
``mediaq:iqdb:*``); otherwise a danbooru/iqdb or iqdb-rs server at that URL.

The signature (and the JPEG conversion a server needs) is computed in the worker's process pool.
Errors, with stable codes:

* ``missing_file``, ``unreadable`` (permanent), ``read_error`` (transient): reading the thumbnail;
* ``too_large`` (permanent): more pixels than ``MEDIAQ_MAX_IMAGE_PIXELS``, seen in the header before
  anything is decoded;
* ``bad_image`` (permanent): the file is not a decodable image;
* ``bad_argument`` (permanent): an image id outside the one rule every job applies
  (:func:`~mediaq.runtime.storage.layout.validate_image_id`), or an integer id the server's id map gave to
  another id;
* ``iqdb_unreachable`` (transient, retried): the server cannot be reached, or a proxy in front of it
  answered 502/503/504;
* ``iqdb_rejected`` (permanent): the server refused the request (HTTP 4xx/500 with its message);
* ``redis_unavailable`` (transient): the embedded index's Redis could not be reached.

Results are plain dicts::

    {"image_id", "hash", "grayscale", "backend": "embedded" | "server", "server_hash_matches",
     "post_id", "id_mapped"}

``server_hash_matches``: on a server, whether its hash equals mediaq's for the same JPEG (``None``
when the server sends none, as iqdb-rs; always ``None`` on the embedded index). A mismatch is
logged as a warning. ``post_id``: the id the server knows the image by: the image id itself when it
is an integer 0..2**31-1 (integer ids stay integers), else one from the stable id map in Redis
(:mod:`mediaq.runtime.iqdb_ids`), and then ``id_mapped`` is True; both ``None`` on the embedded
index, which takes any image id as it is.

>>> import asyncio, tempfile                                                  # doctest: +SKIP
>>> asyncio.run(add_to_iqdb(ctx, 42, "thumbs/42.jpg"))["hash"][:5]            # doctest: +SKIP
'iqdb_'
"""

from __future__ import annotations

import logging
import os
from typing import Any

from mediaq.errors import (
    ConfigError,
    ImageTooLargeError,
    InvalidImageError,
    IqdbServerError,
    IqdbUnavailable,
    PermanentJobError,
    TransientJobError,
)
from mediaq.runtime.jobspec import job, job_settings, resources, run_cpu
from mediaq.runtime.settings import Settings
from mediaq.runtime.storage.layout import validate_image_id
from mediaq.runtime.storage.urls import is_url, open_store, read_source

__all__ = ["add_to_iqdb", "prepare_thumbnail", "remove_from_iqdb"]

_CTX_KEY = "mediaq_iqdb_backend"
log = logging.getLogger("mediaq.iqdb")


def prepare_thumbnail(path: str, max_pixels: int | None = None) -> tuple[bytes, str]:
    """Read ``path``, convert it to JPEG if needed, and compute its hash (runs in the process pool).

    Returns ``(jpeg_bytes, hash)``; raises :class:`PermanentJobError` (``too_large`` from the header
    when it has more than ``max_pixels`` pixels, ``bad_image``, and the read errors of
    :func:`mediaq.pure.imaging.read_source`).
    """
    from mediaq.pure.iqdb.compute import compute_signature, to_jpeg_bytes  # NumPy and Pillow: pool side

    data = read_source(path)
    try:
        jpeg = to_jpeg_bytes(data, max_pixels=max_pixels)
        return jpeg, compute_signature(jpeg, max_pixels=max_pixels).hash
    except ImageTooLargeError as exc:
        raise PermanentJobError("too_large", f"{path}: {exc}", path=path, limit=max_pixels) from None
    except InvalidImageError as exc:
        raise PermanentJobError("bad_image", f"{path} is not a decodable image: {exc}", path=path) from None


def _resolve(settings: Settings, thumb_path: Any) -> str:
    if not isinstance(thumb_path, str) or not thumb_path or "\x00" in thumb_path:
        raise PermanentJobError("bad_argument", f"thumb_path={thumb_path!r} must be a non-empty path string",
                                argument="thumb_path", value=repr(thumb_path)[:200])
    if is_url(thumb_path) or os.path.isabs(thumb_path):
        return thumb_path
    return open_store(settings.storage).location(thumb_path)


def _check_image_id(image_id: Any) -> int | str:
    """The one image id rule of every job (an int stays an int)."""
    validate_image_id(image_id)
    return image_id


def _backend(ctx: dict[str, Any]) -> Any:
    """The backend object, created once per worker process (kept in :func:`~mediaq.jobs.resources`:
    arq gives each job a copy of ``ctx``)."""
    settings = job_settings(ctx)
    shared = resources(ctx)
    redis = ctx.get("redis")
    if settings.iqdb_url:
        from mediaq.runtime.iqdb_ids import PostIdMap
        from mediaq.runtime.iqdb_server import RemoteIqdb

        key = f"{_CTX_KEY}:server:{settings.iqdb_url}:{id(redis)}"
        backend = shared.get(key)
        if backend is None or (backend.ids is not None and backend.ids.redis is not redis):
            backend = shared[key] = RemoteIqdb(settings.iqdb_url, ids=None if redis is None else PostIdMap(redis))
        return backend
    from mediaq.runtime.iqdb_index import IqdbIndex

    if redis is None:
        raise ConfigError("the embedded IQDB index needs ctx['redis'] (a worker provides it)")
    key = f"{_CTX_KEY}:embedded:{id(redis)}"
    backend = shared.get(key)
    if backend is None or backend.redis is not redis:
        backend = shared[key] = IqdbIndex(redis)
    return backend


def _server_failure(exc: IqdbServerError | IqdbUnavailable) -> Exception:
    if isinstance(exc, IqdbUnavailable) or exc.status in (502, 503, 504):
        return TransientJobError("iqdb_unreachable", str(exc))
    return PermanentJobError("iqdb_rejected", str(exc), status=exc.status, exception=exc.exception,
                             server_message=exc.server_message)


def _redis_failure(exc: Exception) -> Exception:
    return TransientJobError("redis_unavailable", f"the embedded IQDB index's Redis failed: {exc}")


@job(timeout=120)
async def add_to_iqdb(ctx: dict[str, Any], image_id: int | str, thumb_path: str) -> dict[str, Any]:
    """Index the thumbnail at ``thumb_path`` (an absolute path, a URL, or a key under ``settings.storage``
    such as ``thumbs/42.jpg``) as
    ``image_id``, replacing an earlier entry of that id. Returns its hash."""
    settings = job_settings(ctx)
    remote = bool(settings.iqdb_url)
    image_id = _check_image_id(image_id)
    path = _resolve(settings, thumb_path)
    jpeg, text = await run_cpu(ctx, prepare_thumbnail, path, settings.max_image_pixels)
    from mediaq.pure.iqdb.signature import parse_hash  # NumPy: loaded by the first IQDB job, not at start

    sig = parse_hash(text)
    backend = _backend(ctx)
    result: dict[str, Any] = {"image_id": image_id, "hash": text, "grayscale": sig.is_grayscale}
    if remote:
        try:
            added = await backend.add(image_id, jpeg, signature=sig)
        except (IqdbServerError, IqdbUnavailable) as exc:
            raise _server_failure(exc) from None
        except ConfigError as exc:
            raise _id_refused(image_id, exc) from None
        result.update(hash=added.hash, grayscale=added.signature.is_grayscale, backend="server",
                      server_hash_matches=added.local_hash_matches, post_id=added.post_id, id_mapped=added.mapped)
        if added.local_hash_matches is False:
            log.warning("IQDB server %s hashed image %r as %s, mediaq as %s: the embedded index would "
                        "score it differently", settings.iqdb_url, image_id, added.hash[:40], text[:40])
        return result
    import redis.exceptions

    try:
        await backend.add_many([(image_id, sig)])
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise _redis_failure(exc) from None
    result.update(backend="embedded", server_hash_matches=None, post_id=None, id_mapped=None)
    return result


@job(timeout=60)
async def remove_from_iqdb(ctx: dict[str, Any], image_id: int | str) -> dict[str, Any]:
    """Remove ``image_id`` from the index. ``removed`` is True/False on the embedded index and None on
    a server (which answers the same for unknown ids)."""
    settings = job_settings(ctx)
    remote = bool(settings.iqdb_url)
    image_id = _check_image_id(image_id)
    backend = _backend(ctx)
    if remote:
        try:
            await backend.remove(image_id)
        except (IqdbServerError, IqdbUnavailable) as exc:
            raise _server_failure(exc) from None
        except ConfigError as exc:
            raise _id_refused(image_id, exc) from None
        return {"image_id": image_id, "backend": "server", "removed": None}
    import redis.exceptions

    try:
        removed = await backend.remove(image_id)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise _redis_failure(exc) from None
    return {"image_id": image_id, "backend": "embedded", "removed": removed}


def _id_refused(image_id: Any, exc: ConfigError) -> PermanentJobError:
    return PermanentJobError("bad_argument", f"image_id={image_id!r}: {exc}", argument="image_id",
                             value=repr(image_id)[:200])
