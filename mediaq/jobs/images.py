"""Image jobs: thumbnails, medium/large variants, and all three from one decode.

Sources and outputs go through the storage interface (:mod:`mediaq.runtime.storage`): a source is a
local path or an object URL (``s3://bucket/originals/a.jpg``), outputs go to ``{storage}/thumbs/
{image_id}.{ext}``, ``{storage}/medium/...``, ``{storage}/large/...`` under a local folder or an
object-store prefix (``ext`` from the format: jpg, png, webp).

Seed rules for variants: a variant is made only when the picture's longer side is larger than the
variant's edge (else ``skipped``, reason ``"not_larger"``), and dropped when its encoded bytes are not
fewer than the original file's (``"not_smaller"``). A skipped variant removes any earlier file of the
same name, so the folder always matches the latest run.

Each job validates its arguments on the event loop, then reads, decodes and encodes in the worker's
process pool (:func:`~mediaq.jobs.run_cpu`: one process per core). Into a local folder the pool
process also writes the files (temporary file, fsync, rename: :meth:`LocalStore.write
<mediaq.runtime.storage.local.LocalStore.write>`), so only the small result dicts cross back; handing
the bytes to a writer thread in the worker cost that process ~1 ms of CPU a job more (pickling,
threads contending for the GIL around each system call), more than the fsync's ~0.3 ms wait in the
pool process, which the worker's own event loop fills (issue 17). To an object store the bytes come
back and are uploaded from a thread, so no core waits on the network. Pillow and NumPy are imported
by the pool processes only: the worker's main process stays small and starts fast. Results are
plain dicts::

    {"image_id", "variant", "path", "key", "width", "height", "bytes", "format", "skipped", "reason",
     "source_width", "source_height", "source_format", "source_bytes"}

``path`` is where the output is (an absolute path, or a URL any host with credentials can read),
``key`` where it is under the storage root (``thumbs/42.jpg``).

Reruns write the same bytes to the same path. ``create_image_set`` decodes once for all three
outputs and resizes large from the decode, medium from large and thumbnail from medium
(:func:`~mediaq.pure.imaging.render_outputs`); its thumbnail and medium can differ by a few levels
from the separate jobs' (each stays above 45 dB against a resize of the full decode), but each job
on its own is deterministic.

>>> import asyncio, tempfile
>>> from mediaq.runtime.settings import Settings
>>> ctx = {"settings": Settings.load(storage=tempfile.mkdtemp())}
>>> r = asyncio.run(create_thumbnail(ctx, "cat", "data/chelsea.png"))
>>> r["width"], r["height"], r["format"], r["path"].endswith("/thumbs/cat.jpg")
(250, 166, 'jpeg', True)
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from mediaq.errors import PermanentJobError
from mediaq.pure.imagespec import OUTPUT_FORMATS, OutputSpec, check_format, check_quality, check_size
from mediaq.runtime.jobspec import job, job_settings, run_cpu
from mediaq.runtime.settings import Settings
from mediaq.runtime.storage.layout import output_key, validate_image_id
from mediaq.runtime.storage.urls import is_url, open_source, open_store

if TYPE_CHECKING:
    from mediaq.pure.imaging import Output

__all__ = [
    "VARIANTS",
    "create_image_set",
    "create_thumbnail",
    "create_variant",
    "make_outputs",
    "render_task",
    "store_outputs",
]

VARIANTS = ("medium", "large")


# -- jobs (event loop: validate, CPU work in the pool, file writes in a thread) ---------------------
@job(timeout=60)  # seconds: a worst-case (80 Mpx) decode takes a few
async def create_thumbnail(
    ctx: dict[str, Any],
    image_id: str | int,
    source_path: str,
    *,
    format: str | None = None,
    quality: int | None = None,
    width: int | None = None,
    height: int | None = None,
) -> dict[str, Any]:
    """Write ``{storage}/thumbs/{image_id}.{ext}``: the picture fitted within ``width`` x ``height``
    (default 250x200 from settings), upright, sRGB, never upscaled."""
    s = job_settings(ctx)
    validate_image_id(image_id)
    _check_source_path(source_path)
    box = _box(s, width, height)
    spec = OutputSpec(box, check_format(_or(format, s.thumb_format)), check_quality(_or(quality, s.thumb_quality)))
    result = await _run(ctx, s, image_id, source_path, {"thumbnail": spec})
    return result["thumbnail"]


@job(timeout=120)  # seconds: a worst-case (80 Mpx) decode takes a few
async def create_variant(
    ctx: dict[str, Any],
    image_id: str | int,
    source_path: str,
    variant: str = "medium",
    *,
    edge: int | None = None,
    format: str | None = None,
    quality: int | None = None,
) -> dict[str, Any]:
    """Write ``{storage}/{variant}/{image_id}.{ext}`` fitted within ``edge`` x ``edge`` (default
    ``medium_edge`` 1280 or ``large_edge`` 2560), following the seed rules (see the module doc)."""
    s = job_settings(ctx)
    validate_image_id(image_id)
    _check_source_path(source_path)
    if variant not in VARIANTS:
        raise PermanentJobError("bad_argument", f"variant={variant!r} must be one of {list(VARIANTS)}",
                                argument="variant", value=repr(variant))
    spec = _variant_spec(s, _or(edge, s.variant_edges[variant]), format, quality, "edge")
    result = await _run(ctx, s, image_id, source_path, {variant: spec})
    return result[variant]


@job(timeout=180)  # seconds: a worst-case (80 Mpx) decode takes a few
async def create_image_set(
    ctx: dict[str, Any],
    image_id: str | int,
    source_path: str,
    *,
    format: str | None = None,
    quality: int | None = None,
    width: int | None = None,
    height: int | None = None,
    medium_edge: int | None = None,
    large_edge: int | None = None,
    variant_format: str | None = None,
    variant_quality: int | None = None,
) -> dict[str, Any]:
    """Thumbnail, medium and large from ONE read and ONE decode (for reindex pipelines).

    Returns ``{"image_id", "source_width", "source_height", "source_format", "source_bytes",
    "thumbnail": {...}, "medium": {...}, "large": {...}}`` with the per-output dicts of the single jobs.
    """
    s = job_settings(ctx)
    validate_image_id(image_id)
    _check_source_path(source_path)
    specs = {
        "thumbnail": OutputSpec(_box(s, width, height), check_format(_or(format, s.thumb_format)),
                                check_quality(_or(quality, s.thumb_quality))),
        "medium": _variant_spec(s, _or(medium_edge, s.medium_edge), variant_format, variant_quality, "medium_edge"),
        "large": _variant_spec(s, _or(large_edge, s.large_edge), variant_format, variant_quality, "large_edge"),
    }
    result = await _run(ctx, s, image_id, source_path, specs)
    first = result["thumbnail"]
    return {"image_id": image_id, **{k: first[k] for k in _SOURCE_KEYS}, **result}


async def _run(ctx: dict[str, Any], s: Settings, image_id: str | int, source_path: str,
               specs: dict[str, OutputSpec]) -> dict[str, dict[str, Any]]:
    """Pixels in the process pool. A local folder is written there too (only the small result dicts
    come back); an object store from a thread here, so no core waits on the network."""
    if not is_url(s.storage):  # a local folder (settings keep it as an absolute path)
        return await run_cpu(ctx, make_outputs, source_path, specs, s.storage, image_id,
                             max_pixels=s.max_image_pixels)
    info, outputs = await run_cpu(ctx, render_task, source_path, specs, max_pixels=s.max_image_pixels)
    return await asyncio.to_thread(store_outputs, s.storage, image_id, info, outputs, specs)


# -- pool side: pure functions of their arguments (importable by forkserver/spawn children) --------
def render_task(source_path: str, specs: dict[str, OutputSpec], *,
                max_pixels: int | None = None) -> tuple[dict[str, Any], dict[str, Output | str]]:
    """Read ``source_path`` once, decode once, and encode every output in ``specs``.

    Keys ``thumbnail`` (always made) or a variant name (seed rules). Returns the source facts and,
    per key, the encoded :class:`Output` or the reason it was skipped (``"not_larger"``,
    ``"not_smaller"``). With only variants that are not larger, the pixels are never decoded.
    """
    from mediaq.pure.imaging import decode, probe, render_outputs  # Pillow and NumPy: pool processes only

    with open_source(source_path) as f:  # an object: its header first, the rest only if decoded
        info = probe(f, name=source_path, max_pixels=max_pixels)
        longest = max(info["width"], info["height"])
        results: dict[str, Output | str] = {}
        wanted = {}
        for name, spec in specs.items():
            if name != "thumbnail" and longest <= spec.box[0]:
                results[name] = "not_larger"
            else:
                wanted[name] = spec
        if not wanted:
            return info, results
        source = decode(f, [spec.box for spec in wanted.values()], name=source_path, max_pixels=max_pixels)
    for name, out in render_outputs(source, wanted).items():
        results[name] = "not_smaller" if name != "thumbnail" and len(out.data) >= source.bytes else out
    return source.info(), results


def make_outputs(source_path: str, specs: dict[str, OutputSpec], root: str, image_id: str | int, *,
                 max_pixels: int | None = None) -> dict[str, dict[str, Any]]:
    """:func:`render_task` then :func:`store_outputs`, in one call: the result dict per key.

    >>> import tempfile
    >>> r = make_outputs("data/chelsea.png", {"thumbnail": OutputSpec((250, 200))}, tempfile.mkdtemp(), "cat")
    >>> r["thumbnail"]["key"], r["thumbnail"]["width"]
    ('thumbs/cat.jpg', 250)
    """
    info, outputs = render_task(source_path, specs, max_pixels=max_pixels)
    return store_outputs(root, image_id, info, outputs, specs)


def store_outputs(root: str, image_id: str | int, info: dict[str, Any], outputs: dict[str, Output | str],
                  specs: dict[str, OutputSpec]) -> dict[str, dict[str, Any]]:
    """Write each output whole or not at all under the storage root ``root`` (a path or URL;
    thumbnails to ``thumbs/``, variants to their own folder); a skipped variant removes any earlier
    file of its name. Returns the result dict per key."""
    store = open_store(root)
    results = {}
    for name, out in outputs.items():
        if isinstance(out, str):
            store.remove_output(name, image_id, OUTPUT_FORMATS[specs[name].format][1])
            results[name] = {"image_id": image_id, "variant": name, "path": None, "key": None, "width": None,
                             "height": None, "bytes": None, "format": specs[name].format, "skipped": True,
                             "reason": out, **_source_fields(info)}
        else:
            key = output_key(name, image_id, out.ext)
            results[name] = {"image_id": image_id, "variant": name, "path": store.write(key, out.data), "key": key,
                             "width": out.width, "height": out.height, "bytes": len(out.data), "format": out.format,
                             "skipped": False, "reason": None, **_source_fields(info)}
    return {name: results[name] for name in specs}


# -- helpers ----------------------------------------------------------------------------------------
_SOURCE_KEYS = ("source_width", "source_height", "source_format", "source_bytes")


def _source_fields(info: dict[str, Any]) -> dict[str, Any]:
    return {"source_width": info["width"], "source_height": info["height"], "source_format": info["format"],
            "source_bytes": info["bytes"]}


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _box(s: Settings, width: int | None, height: int | None) -> tuple[int, int]:
    return (check_size("width", _or(width, s.thumb_width)), check_size("height", _or(height, s.thumb_height)))


def _variant_spec(s: Settings, edge: Any, fmt: str | None, quality: int | None, name: str) -> OutputSpec:
    edge = check_size(name, edge)
    return OutputSpec((edge, edge), check_format(_or(fmt, s.variant_format)),
                      check_quality(_or(quality, s.variant_quality)))


def _check_source_path(source_path: Any) -> None:
    if not isinstance(source_path, str) or not source_path or "\x00" in source_path:
        raise PermanentJobError("bad_argument", f"source_path={source_path!r} must be a non-empty path or URL",
                                argument="source_path", value=repr(source_path)[:200])
