"""Image jobs: thumbnails, medium/large variants, and all three from one decode.

Outputs: ``{storage}/thumbs/{image_id}.{ext}``, ``{storage}/medium/{image_id}.{ext}``,
``{storage}/large/{image_id}.{ext}`` (``ext`` from the format: jpg, png, webp).

Seed rules for variants: a variant is made only when the picture's longer side is larger than the
variant's edge (else ``skipped``, reason ``"not_larger"``), and dropped when its encoded bytes are not
fewer than the original file's (``"not_smaller"``). A skipped variant removes any earlier file of the
same name, so the folder always matches the latest run.

Each job validates its arguments on the event loop, then does all file and pixel work in the
worker's process pool (:func:`~mediaq.jobs.run_cpu`). Results are plain dicts::

    {"image_id", "variant", "path", "width", "height", "bytes", "format", "skipped", "reason",
     "source_width", "source_height", "source_format", "source_bytes"}

Reruns write the same bytes to the same path. ``create_image_set`` decodes once for all three
outputs; its thumbnail and medium can differ by a few levels from the separate jobs' (a JPEG may be
decoded at a different DCT scale), but each job on its own is deterministic.

>>> import asyncio, tempfile
>>> from mediaq.settings import Settings
>>> ctx = {"settings": Settings.load(storage=tempfile.mkdtemp())}
>>> r = asyncio.run(create_thumbnail(ctx, "cat", "data/chelsea.png"))
>>> r["width"], r["height"], r["format"], r["path"].endswith("/thumbs/cat.jpg")
(250, 166, 'jpeg', True)
"""

from __future__ import annotations

from typing import Any

from mediaq.errors import PermanentJobError
from mediaq.imaging import (
    OUTPUT_FORMATS,
    Output,
    OutputSpec,
    Source,
    check_format,
    check_quality,
    check_size,
    decode,
    probe,
    read_source,
    render_outputs,
)
from mediaq.jobs._base import job, run_cpu
from mediaq.settings import Settings
from mediaq.storage import Storage, validate_image_id

__all__ = [
    "VARIANTS",
    "create_image_set",
    "create_thumbnail",
    "create_variant",
    "image_set_task",
    "thumbnail_task",
    "variant_task",
]

THUMBS = "thumbs"
VARIANTS = ("medium", "large")
DEFAULT_VARIANT_FORMAT = "jpeg"


# -- jobs (event loop: validate, then hand over to the pool) ----------------------------------------
@job
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
    s = _settings(ctx)
    validate_image_id(image_id)
    _check_source_path(source_path)
    box = _box(s, width, height)
    spec = OutputSpec(box, check_format(_or(format, s.thumb_format)), check_quality(_or(quality, s.thumb_quality)))
    return await run_cpu(ctx, thumbnail_task, str(s.storage), image_id, source_path, spec)


@job
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
    s = _settings(ctx)
    validate_image_id(image_id)
    _check_source_path(source_path)
    if variant not in VARIANTS:
        raise PermanentJobError("bad_argument", f"variant={variant!r} must be one of {list(VARIANTS)}",
                                argument="variant", value=repr(variant))
    spec = _variant_spec(s, _or(edge, s.variant_edges[variant]), format, quality, "edge")
    return await run_cpu(ctx, variant_task, str(s.storage), image_id, source_path, variant, spec)


@job
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
    """Thumbnail, medium and large from ONE decode (for reindex pipelines).

    Returns ``{"image_id", "source_width", "source_height", "source_format", "source_bytes",
    "thumbnail": {...}, "medium": {...}, "large": {...}}`` with the per-output dicts of the single jobs.
    """
    s = _settings(ctx)
    validate_image_id(image_id)
    _check_source_path(source_path)
    thumb = OutputSpec(_box(s, width, height), check_format(_or(format, s.thumb_format)),
                       check_quality(_or(quality, s.thumb_quality)))
    variants = {
        "medium": _variant_spec(s, _or(medium_edge, s.medium_edge), variant_format, variant_quality, "medium_edge"),
        "large": _variant_spec(s, _or(large_edge, s.large_edge), variant_format, variant_quality, "large_edge"),
    }
    return await run_cpu(ctx, image_set_task, str(s.storage), image_id, source_path, thumb, variants)


# -- pool side (pure functions of their arguments; importable by forkserver/spawn children) -------
def thumbnail_task(root: str, image_id: str | int, source_path: str, spec: OutputSpec) -> dict[str, Any]:
    """Read, decode (draft for ``spec.box``), render, encode and atomically write one thumbnail."""
    data = read_source(source_path)
    source = decode(data, [spec.box], name=source_path)
    out = render_outputs(source, {"thumbnail": spec})["thumbnail"]
    path = Storage(root).write(THUMBS, image_id, out.ext, out.data)
    return _result(image_id, "thumbnail", source.info(), out, str(path))


def variant_task(root: str, image_id: str | int, source_path: str, variant: str, spec: OutputSpec) -> dict[str, Any]:
    """One variant with the seed rules; the size check reads only the header."""
    data = read_source(source_path)
    info = probe(data, name=source_path)
    storage = Storage(root)
    if max(info["width"], info["height"]) <= spec.box[0]:
        return _skip(storage, image_id, variant, info, spec, "not_larger")
    source = decode(data, [spec.box], name=source_path)
    return _keep_or_drop(storage, image_id, variant, source, render_outputs(source, {variant: spec})[variant], spec)


def image_set_task(
    root: str, image_id: str | int, source_path: str, thumb: OutputSpec, variants: dict[str, OutputSpec]
) -> dict[str, Any]:
    """Thumbnail and variants from one read and one decode (drafted for the largest output needed)."""
    data = read_source(source_path)
    info = probe(data, name=source_path)
    longest = max(info["width"], info["height"])
    needed = {name: spec for name, spec in variants.items() if longest > spec.box[0]}
    source = decode(data, [thumb.box, *(spec.box for spec in needed.values())], name=source_path)
    info = source.info()
    outputs = render_outputs(source, {"thumbnail": thumb, **needed})
    storage = Storage(root)
    result: dict[str, Any] = {"image_id": image_id, **_source_fields(info)}
    path = storage.write(THUMBS, image_id, outputs["thumbnail"].ext, outputs["thumbnail"].data)
    result["thumbnail"] = _result(image_id, "thumbnail", info, outputs["thumbnail"], str(path))
    for name, spec in variants.items():
        if name in needed:
            result[name] = _keep_or_drop(storage, image_id, name, source, outputs[name], spec)
        else:
            result[name] = _skip(storage, image_id, name, info, spec, "not_larger")
    return result


# -- helpers ----------------------------------------------------------------------------------------
def _keep_or_drop(storage: Storage, image_id: str | int, variant: str, source: Source, out: Output,
                  spec: OutputSpec) -> dict[str, Any]:
    info = source.info()
    if len(out.data) >= source.bytes:
        return _skip(storage, image_id, variant, info, spec, "not_smaller")
    path = storage.write(variant, image_id, out.ext, out.data)
    return _result(image_id, variant, info, out, str(path))


def _skip(storage: Storage, image_id: str | int, variant: str, info: dict[str, Any], spec: OutputSpec,
          reason: str) -> dict[str, Any]:
    storage.remove(variant, image_id, OUTPUT_FORMATS[spec.format][1])
    return {"image_id": image_id, "variant": variant, "path": None, "width": None, "height": None, "bytes": None,
            "format": spec.format, "skipped": True, "reason": reason, **_source_fields(info)}


def _result(image_id: str | int, variant: str, info: dict[str, Any], out: Output, path: str) -> dict[str, Any]:
    return {"image_id": image_id, "variant": variant, "path": path, "width": out.width, "height": out.height,
            "bytes": len(out.data), "format": out.format, "skipped": False, "reason": None, **_source_fields(info)}


def _source_fields(info: dict[str, Any]) -> dict[str, Any]:
    return {"source_width": info["width"], "source_height": info["height"], "source_format": info["format"],
            "source_bytes": info["bytes"]}


def _settings(ctx: dict[str, Any]) -> Settings:
    settings = ctx.get("settings")
    if settings is None:
        settings = ctx["settings"] = Settings.load()
    return settings


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _box(s: Settings, width: int | None, height: int | None) -> tuple[int, int]:
    return (check_size("width", _or(width, s.thumb_width)), check_size("height", _or(height, s.thumb_height)))


def _variant_spec(s: Settings, edge: Any, fmt: str | None, quality: int | None, name: str) -> OutputSpec:
    edge = check_size(name, edge)
    return OutputSpec((edge, edge), check_format(_or(fmt, DEFAULT_VARIANT_FORMAT)),
                      check_quality(_or(quality, s.variant_quality)))


def _check_source_path(source_path: Any) -> None:
    if not isinstance(source_path, str) or not source_path or "\x00" in source_path:
        raise PermanentJobError("bad_argument", f"source_path={source_path!r} must be a non-empty path string",
                                argument="source_path", value=repr(source_path)[:200])
