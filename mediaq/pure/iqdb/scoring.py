"""An in-memory IQDB index with the server's scoring, vectorised with numpy (pure: no Redis).

Scores are danbooru/iqdb's ``IQDB::queryFromSignature`` (``src/imgdb.cpp``) operation by operation,
in float32 (its ``Score`` type) throughout, so they are the server's bit for bit:

* per image ``s = sum_c w[0][c] * |avgl_T[c] - f32(avglf_Q[c])|`` over the query's channels, every
  operation in float32 (``avgl_T`` kept as float32 like the server's ``m_info``);
* channels outermost, then the query's 40 coefficients in order: for each whose bucket is non-empty
  anywhere in the index, ``scale -= w[bin][c]`` and every image in that bucket gets ``s -= w[bin][c]``;
* ``score = (s * 100) * (1 / scale)`` in float32 (0 when no bucket was hit); images whose float32
  ``avgl_Y`` is 0 (pure black: the server's mark of a deleted image) are never returned.

Ties: the order is by the unscaled ``s`` (lower is better), so the best ``limit`` are the server's.
Among *exactly* equal ``s`` mediaq ranks the image indexed first (an id added again counts as new)
first, and at the ``limit`` boundary keeps the ones indexed first; the server's order among equal
scores, and which of them it keeps at the boundary, come from its ``std::priority_queue`` and change
with ``limit``. Nothing else differs.

Storage: rows of signatures plus an inverted index (one sorted array of rows per bucket, CSR) over
the rows present at the last rebuild, and a small dict-of-lists for rows added since; removed rows
are tombstones until the next compaction. Rebuilds are amortised (when the recent part exceeds a
fraction of the whole).

>>> import numpy as np
>>> from mediaq.pure.iqdb.compute import signature_from_rgb
>>> index = LocalIndex()
>>> sig = signature_from_rgb(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
>>> index.add(7, sig)
>>> [(m.image_id, round(m.score, 3)) for m in index.query(sig)]
[(7, 100.0)]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from mediaq.pure.iqdb.compute import mirror_signature
from mediaq.pure.iqdb.signature import GRAYSCALE_LIMIT, NUM_COEFS, NUM_PIXELS, Signature

__all__ = ["WEIGHTS", "ImageId", "LocalIndex", "Match", "bins", "merge_mirrored"]

ImageId = int | str

#: Weights by bin (rows) and channel (Y, I, Q), as the server's float table.
WEIGHTS = np.array([
    [5.00, 19.21, 34.37],
    [0.83, 1.26, 0.36],
    [1.01, 0.44, 0.45],
    [0.52, 0.53, 0.14],
    [0.47, 0.28, 0.18],
    [0.30, 0.14, 0.27],
], dtype=np.float32)

_KEYS_PER_CHANNEL = 2 * NUM_PIXELS * NUM_PIXELS  # signed index -16384..16383 shifted
_NUM_KEYS = 3 * _KEYS_PER_CHANNEL
_F32 = np.float32


def bins(index: np.ndarray) -> np.ndarray:
    """``bin(i) = min(max(i // 128, i % 128), 5)`` of absolute coefficient indices."""
    index = np.abs(np.asarray(index))
    return np.minimum(np.maximum(index // NUM_PIXELS, index % NUM_PIXELS), 5)


class Match(NamedTuple):
    """One query result: the image id, its score (100 is a perfect match), its hash, and whether it
    was found through the mirrored query (``mirror=True``)."""

    image_id: ImageId
    score: float
    hash: str
    mirrored: bool = False


def merge_mirrored(plain: list[Match], flipped: list[Match], limit: int, margin: float = 0.0) -> list[Match]:
    """Merge a query's matches with its mirrored query's: best score per id, best first.

    A mirrored match ranks as ``score - margin`` (its reported score is its own); ``margin=0`` is
    the plain best-score merge. A margin keeps chance matches of the mirrored query from displacing
    a weaker true match (measured in ``benchmarks/bench_iqdb.py``).
    """
    best: dict[ImageId, tuple[float, Match]] = {}
    for m in plain:
        best[m.image_id] = (m.score, m)
    for m in flipped:
        key = m.score - margin
        if m.image_id not in best or key > best[m.image_id][0]:
            best[m.image_id] = (key, m._replace(mirrored=True))
    ranked = sorted(best.values(), key=lambda item: -item[0])
    return [m for _, m in ranked[:limit]]


def _keys(sig: np.ndarray, colors: int) -> np.ndarray:
    """Bucket keys of a (3, 40) signature's first ``colors`` channels, channel-major."""
    channel = np.arange(3, dtype=np.int32)[:colors, None] * _KEYS_PER_CHANNEL
    return (channel + sig[:colors].astype(np.int32) + NUM_PIXELS * NUM_PIXELS).reshape(-1)


class LocalIndex:
    """The server's index in memory. Ids are ints or strings; adding an existing id replaces it."""

    def __init__(self, rebuild_fraction: float = 0.1, min_rebuild: int = 4096) -> None:
        self.rebuild_fraction = rebuild_fraction
        self.min_rebuild = min_rebuild
        self._cap = 0
        self._n = 0  # rows used (live and tombstones)
        self._ids: list[ImageId | None] = []
        self._avglf = np.zeros((0, 3), np.float64)
        self._avgl32 = np.zeros((0, 3), np.float32)
        self._sigs = np.zeros((0, 3, NUM_COEFS), np.int16)
        self._colors = np.zeros(0, np.int8)
        self._alive = np.zeros(0, bool)
        self._ok = np.zeros(0, bool)  # alive and avgl_Y != 0: may be returned
        self._seq = np.zeros(0, np.int64)
        self._next_seq = 0
        self._row_of: dict[ImageId, int] = {}
        self._counts = np.zeros(_NUM_KEYS, np.int64)  # live entries per bucket, over all rows
        self._offsets = np.zeros(_NUM_KEYS + 1, np.int64)  # CSR over rows [0, _built)
        self._rows = np.zeros(0, np.int32)
        self._built = 0
        self._recent: dict[int, list[int]] = {}  # bucket -> rows >= _built

    # -- size -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._row_of

    def ids(self) -> list[ImageId]:
        """Live ids in indexing order."""
        return [i for i in self._ids[: self._n] if i is not None]

    @property
    def nbytes(self) -> int:
        """Bytes held by the numpy arrays (signatures, DC terms, inverted index)."""
        arrays = (self._avglf, self._avgl32, self._sigs, self._colors, self._alive, self._ok, self._seq, self._counts,
                  self._offsets, self._rows)
        return int(sum(a.nbytes for a in arrays))

    def get(self, image_id: ImageId) -> Signature | None:
        row = self._row_of.get(image_id)
        if row is None:
            return None
        return Signature(tuple(self._avglf[row]), self._sigs[row])  # type: ignore[arg-type]

    # -- changes ----------------------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        if need <= self._cap:
            return
        cap = max(need, 2 * self._cap, 1024)

        def grow(a: np.ndarray) -> np.ndarray:
            out = np.zeros((cap, *a.shape[1:]), a.dtype)
            out[: self._n] = a[: self._n]
            return out

        self._avglf, self._avgl32, self._sigs = grow(self._avglf), grow(self._avgl32), grow(self._sigs)
        self._colors, self._alive, self._seq = grow(self._colors), grow(self._alive), grow(self._seq)
        self._ok = grow(self._ok)
        self._cap = cap

    def add(self, image_id: ImageId, sig: Signature) -> None:
        """Add ``image_id`` (replacing it if present, like the server: it then ranks as newest)."""
        self.add_many([(image_id, sig)])

    def add_many(self, items: Iterable[tuple[ImageId, Signature]]) -> int:
        """Add or replace many; returns how many were applied."""
        items = list(items)
        if not items:
            return 0
        avglf = np.array([sig.avglf for _, sig in items], dtype=np.float64).reshape(-1, 3)
        sigs = np.stack([sig.sig for _, sig in items])
        return self.add_arrays([image_id for image_id, _ in items], avglf, sigs)

    def add_arrays(self, ids: list[ImageId], avglf: np.ndarray, sigs: np.ndarray) -> int:
        """Bulk add from arrays: ``avglf`` (n, 3) float64 and ``sigs`` (n, 3, 40) int16 signed indices.

        The fast path for loading many signatures (no :class:`Signature` objects). A later duplicate id
        replaces an earlier one; an id already indexed is replaced.
        """
        avglf = np.asarray(avglf, dtype=np.float64).reshape(-1, 3)
        sigs = np.sort(np.asarray(sigs).astype(np.int16).reshape(-1, 3, NUM_COEFS), axis=2)
        if len(ids) != avglf.shape[0] or len(ids) != sigs.shape[0]:
            raise ValueError(f"{len(ids)} ids for {avglf.shape[0]} avglf rows and {sigs.shape[0]} signatures")
        mags = np.abs(sigs.astype(np.int32))
        if np.any(mags == 0) or np.any(mags >= NUM_PIXELS * NUM_PIXELS):
            raise ValueError("coefficient indices must be +-1..16383")
        for image_id in [i for i in ids if i in self._row_of]:
            self.remove(image_id)
        last: dict[ImageId, int] = {}  # id -> position of its last occurrence
        for pos, image_id in enumerate(ids):
            last.pop(image_id, None)
            last[image_id] = pos
        if not last:
            return 0
        take = np.fromiter(last.values(), dtype=np.intp, count=len(last))
        start = self._n
        count = take.size
        self._grow(start + count)
        rows = slice(start, start + count)
        self._ids.extend(last)
        self._row_of.update(zip(last, range(start, start + count), strict=True))
        self._avglf[rows] = avglf[take]
        self._avgl32[rows] = avglf[take].astype(np.float32)
        self._sigs[rows] = sigs[take]
        gray = np.abs(avglf[take, 1]) + np.abs(avglf[take, 2]) < GRAYSCALE_LIMIT
        self._colors[rows] = np.where(gray, 1, 3)
        self._seq[rows] = np.arange(self._next_seq, self._next_seq + count)
        self._next_seq += count
        self._alive[rows] = True
        self._ok[rows] = self._avgl32[rows, 0] != 0  # the server treats avgl_Y == 0 as deleted
        self._n = start + count
        if self._n - self._built > max(self.min_rebuild, self.rebuild_fraction * self._built):
            self.rebuild()  # recounts every bucket
        else:
            keys, key_rows = self._row_keys(start, self._n)
            np.add.at(self._counts, keys, 1)
            for key, row in zip(keys.tolist(), key_rows.tolist(), strict=True):
                self._recent.setdefault(key, []).append(row)
        return count

    def _row_keys(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Bucket keys of rows [start, stop) and the row of each (grayscale rows: Y only)."""
        channel = (np.arange(3, dtype=np.int32) * _KEYS_PER_CHANNEL)[None, :, None]
        keys = channel + self._sigs[start:stop].astype(np.int32) + NUM_PIXELS * NUM_PIXELS  # (n, 3, 40)
        mask = np.broadcast_to((np.arange(3)[None, :] < self._colors[start:stop, None])[:, :, None], keys.shape)
        rows = np.broadcast_to(np.arange(start, stop, dtype=np.int32)[:, None, None], keys.shape)
        return keys[mask], rows[mask]

    def remove(self, image_id: ImageId) -> bool:
        """Remove ``image_id``; False if it was not indexed."""
        row = self._row_of.pop(image_id, None)
        if row is None:
            return False
        self._alive[row] = False
        self._ok[row] = False
        self._ids[row] = None
        self._counts[_keys(self._sigs[row], int(self._colors[row]))] -= 1
        dead = self._n - len(self._row_of)
        if dead > max(self.min_rebuild, 0.3 * self._n):
            self.rebuild()
        return True

    def clear(self) -> None:
        self.__init__(self.rebuild_fraction, self.min_rebuild)  # type: ignore[misc]

    def rebuild(self) -> None:
        """Compact away removed rows and rebuild the inverted index over every row."""
        live = np.flatnonzero(self._alive[: self._n])
        n = live.size
        self._avglf[:n] = self._avglf[live]
        self._avgl32[:n] = self._avgl32[live]
        self._sigs[:n] = self._sigs[live]
        self._colors[:n] = self._colors[live]
        self._seq[:n] = self._seq[live]
        self._ok[:n] = self._ok[live]
        self._ok[n: self._n] = False
        self._alive[:n] = True
        self._alive[n: self._n] = False
        self._ids = [self._ids[i] for i in live.tolist()]
        self._row_of = {image_id: row for row, image_id in enumerate(self._ids)}  # type: ignore[misc]
        self._n = n
        keys, rows = self._row_keys(0, n)
        order = np.argsort(keys, kind="stable")
        self._rows = rows[order]
        counts = np.bincount(keys, minlength=_NUM_KEYS)
        self._offsets = np.zeros(_NUM_KEYS + 1, np.int64)
        np.cumsum(counts, out=self._offsets[1:])
        self._counts = counts.astype(np.int64)
        self._built = n
        self._recent = {}

    # -- queries ----------------------------------------------------------------------------------
    def _raw_scores(self, sig: Signature) -> tuple[np.ndarray, np.float32]:
        """Per row: the server's unscaled float32 score ``s`` (lower is better), and ``scale``."""
        n = self._n
        colors = sig.num_colors
        s = np.zeros(n, np.float32)
        query_avgl = np.asarray(sig.avglf, np.float64).astype(np.float32)
        for c in range(colors):  # float32 ops, one at a time: numpy fuses none of them
            s += WEIGHTS[0, c] * np.abs(self._avgl32[:n, c] - query_avgl[c])
        scale = _F32(0.0)
        keys = _keys(sig.sig, colors).reshape(colors, NUM_COEFS)
        weights = WEIGHTS[bins(sig.sig[:colors]), np.arange(colors)[:, None]]  # (colors, 40)
        offsets, rows, recent, counts = self._offsets, self._rows, self._recent, self._counts
        for c in range(colors):  # the server's order: channel outer, coefficient inner
            for b in range(NUM_COEFS):
                key = int(keys[c, b])
                if counts[key] <= 0:
                    continue
                weight = weights[c, b]
                scale = _F32(scale - weight)
                lo, hi = offsets[key], offsets[key + 1]
                if hi > lo:  # ufunc.at: in place, one float32 subtraction per row (fastest on int32 rows)
                    np.subtract.at(s, rows[lo:hi], weight)
                extra = recent.get(key)
                if extra:
                    s[extra] -= weight
        return s, scale

    def _top(self, s: np.ndarray, scale: np.float32, limit: int) -> list[Match]:
        n = self._n
        ok = self._ok[:n]
        count = int(np.count_nonzero(ok))
        if count == 0:
            return []
        masked = np.where(ok, s, np.float32(np.inf))
        if count > limit:
            kth = np.partition(masked, limit - 1)[limit - 1]
            candidates = np.flatnonzero(masked <= kth)  # every tie at the boundary
        else:
            candidates = np.flatnonzero(ok)
        raw = s[candidates]
        order = np.lexsort((self._seq[candidates], raw))[:limit]
        inv = _F32(1.0) / scale if scale != 0 else _F32(0.0)
        scores = (raw[order] * _F32(100)) * inv
        out = []
        for row, score in zip(candidates[order].tolist(), scores.tolist(), strict=True):
            sig = Signature(tuple(self._avglf[row]), self._sigs[row])  # type: ignore[arg-type]
            out.append(Match(self._ids[row], float(score) + 0.0, sig.hash))  # type: ignore[arg-type]
        return out

    def query(self, sig: Signature, limit: int = 10, *, mirror: bool = False,
              mirror_margin: float = 0.0) -> list[Match]:
        """The ``limit`` best matches, best first, scored as the server does.

        ``mirror=True`` also queries the horizontally mirrored signature and keeps each image's
        better score, so flipped copies are found (beyond the reference server); see
        :func:`merge_mirrored` for ``mirror_margin``.
        """
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        matches = self._top(*self._raw_scores(sig), limit)
        if not mirror:
            return matches
        flipped = self._top(*self._raw_scores(mirror_signature(sig)), limit)
        return merge_mirrored(matches, flipped, limit, mirror_margin)

    def find_duplicates(self, threshold: float = 90.0, *, limit: int = 10,
                        mirror: bool = False) -> list[tuple[ImageId, ImageId, float]]:
        """Unordered pairs scoring at least ``threshold`` (the better of the two directions).

        Each image is queried against the index (its ``limit`` best matches), so the cost is one
        query per image. Pairs come as ``(first indexed, second indexed, score)``, best first.
        """
        best: dict[tuple[int, int], tuple[ImageId, ImageId, float]] = {}
        seq_of = {image_id: int(self._seq[row]) for image_id, row in self._row_of.items()}
        for image_id in self.ids():
            sig = self.get(image_id)
            assert sig is not None
            for m in self.query(sig, limit + 1, mirror=mirror):
                if m.image_id == image_id or m.score < threshold:
                    continue
                a, b = sorted((image_id, m.image_id), key=seq_of.__getitem__)
                key = (seq_of[a], seq_of[b])
                if key not in best or m.score > best[key][2]:
                    best[key] = (a, b, m.score)
        return sorted(best.values(), key=lambda p: -p[2])
