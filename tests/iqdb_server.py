"""A stand-in for the danbooru/iqdb HTTP server, on a real loopback socket.

The real server cannot be built here (its sources are C++ with libgd, cpp-httplib, nlohmann/json and
sqlite_orm fetched at build time), so this one reproduces it from its source (``src/server.cpp``,
``src/imgdb.cpp``, ``src/resizer.cpp``; DESIGN.md section 4) in every way mediaq depends on:

==============================================  ==========================================================
request                                         danbooru/iqdb, and this server
==============================================  ==========================================================
``POST /images/<id>`` with a multipart ``file``  200 ``{"post_id", "hash", "signature": {"avglf", "sig"}}``;
                                                an existing id is replaced (removed, then added anew)
``POST /images/<id>`` without ``file``          500 ``iqdb::param_error`` (checked before the id)
``<id>`` of 2**31 or more (POST, DELETE)        500 ``std::out_of_range`` "stoi" (``std::stoi``)
``<id>`` not all digits (``-1``, ``abc``)        404, empty body (the route is ``/images/(\\d+)``)
a file not starting with FF D8 (PNG, GIF...)    500 ``iqdb::image_error`` "Unsupported image format."
a JPEG libjpeg cannot start decoding            500 ``iqdb::image_error`` "Could not read image."
a truncated JPEG libjpeg can partly decode      200 with a hash: the missing blocks are mid-grey, as
                                                libjpeg fills them after the fake end-of-image marker its
                                                data source inserts (mediaq's ``decode_rgb`` does the same)
``DELETE /images/<id>``                         200 ``{"post_id"}``, also for an id never added
``POST /query`` with ``file``, or ``hash`` in   200, best first: ``[{post_id, score, hash, signature}]``
the query string or a form body
``POST /query`` with neither                    500 ``iqdb::param_error``
``POST /query`` without ``limit``               up to 10 matches
``limit`` not a number                          500 ``std::invalid_argument`` "stoi"
``limit=0``                                     the real server crashes (``top()`` of an empty queue):
                                                here the connection is dropped unanswered, the server
                                                stops, and ``limit_zero`` counts it
``limit`` below 0                               every image (``size_t`` wraps around)
scores                                          float32 throughout, channels outermost, then coefficients
                                                (:class:`ServerIndex`, transcribed from ``imgdb.cpp``)
equal scores                                    the order, and which are kept at the limit, come from the
                                                server's ``std::priority_queue`` over internal ids, so
                                                they depend on ``limit`` (replayed by ``PriorityQueue``)
images whose float32 ``avgl_Y`` is 0            never returned (the server's mark of a deleted image)
``GET /status``                                 ``{"images": N}``, N the internal array's size (grown to
                                                50,000 past the newest internal id), not a count
any other error                                 500 ``{"exception": "iqdb::...", "message", "backtrace"}``,
                                                ``backtrace`` one string
an unknown route                                404, empty body
keep-alive                                      supported (``requests_per_connection`` counts requests)
==============================================  ==========================================================

Internal ids are SQLite rowids (``INTEGER PRIMARY KEY``: the highest one + 1, so removing the newest
image frees its id for the next add). An invalid ``hash`` is answered as a ``param_error`` (not one of
the rows above: the server's exact words for it are not modelled).

``flavor="iqdb-rs"`` answers like iqdb-rs instead: ``POST /images/<id>`` -> ``{"id": <internal id>}``
(no hash), ``DELETE`` -> ``{"post_id", "ids"}``, errors as HTTP 400 ``{"error": "invalid_image"}``, a
default limit of 20 (its re-add keeping the old entry is not modelled).

Signatures come from mediaq's own implementation, which matches the real server's hashes on 361 of
361 JPEGs (tests/test_iqdb_signature.py holds golden values); the scoring is independent of mediaq's
(:class:`ServerIndex` is a literal transcription, used to test :class:`~mediaq.pure.iqdb.scoring.LocalIndex`).

>>> server = IqdbTestServer().start()    # doctest: +SKIP
>>> server.url                           # doctest: +SKIP
'http://127.0.0.1:40123'
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from mediaq.errors import InvalidHashError, InvalidImageError
from mediaq.pure.iqdb.compute import compute_signature
from mediaq.pure.iqdb.signature import NUM_COEFS, NUM_PIXELS, Signature, parse_hash
from mediaq.pure.iqdb.stdheap import PriorityQueue

__all__ = ["IqdbTestServer", "ServerIndex"]

F32 = np.float32
#: ``weights[6][3]`` of ``imglib.h``, as float literals (``5.00f``...)
WEIGHTS = [[F32(w) for w in row] for row in (
    (5.00, 19.21, 34.37), (0.83, 1.26, 0.36), (1.01, 0.44, 0.45),
    (0.52, 0.53, 0.14), (0.47, 0.28, 0.18), (0.30, 0.14, 0.27))]
MAX_INT = 2**31 - 1  # std::stoi's range on this platform
ARRAY_GROWTH = 50_000


def _bin(coef: int) -> int:
    i, j = divmod(abs(coef), NUM_PIXELS)
    return min(max(i, j), 5)


class ServerIndex:
    """danbooru/iqdb's ``IQDB`` class (``src/imgdb.cpp``) transcribed statement by statement.

    ``m_info[iqdb_id] = (post_id, avgl)`` with ``avgl`` three float32s; buckets ``(channel, coef)`` ->
    internal ids; the SQLite table is ``rows`` (post id -> (internal id, signature)). Slow on purpose:
    no vectorising, so it can serve as the reference the fast index is tested against.
    """

    def __init__(self) -> None:
        self.m_info: list[tuple[int, list[np.float32]]] = []
        self.rows: dict[int, tuple[int, Signature]] = {}
        self.buckets: dict[tuple[int, int], list[int]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, post_id: int) -> Signature | None:
        row = self.rows.get(post_id)
        return None if row is None else row[1]

    def add(self, post_id: int, sig: Signature) -> int:
        """``IQDB::addImage``: remove, insert a SQLite row (rowid = highest + 1), then into memory."""
        self.remove(post_id)
        iqdb_id = max((i for i, _ in self.rows.values()), default=0) + 1
        self.rows[post_id] = (iqdb_id, sig)
        if iqdb_id >= len(self.m_info):
            self.m_info += [(0, [F32(0)] * 3)] * (iqdb_id + ARRAY_GROWTH - len(self.m_info))
        for c in range(sig.num_colors):
            for coef in sig.sig[c].tolist():
                self.buckets.setdefault((c, coef), []).append(iqdb_id)
        self.m_info[iqdb_id] = (post_id, [F32(v) for v in sig.avglf])
        return iqdb_id

    def remove(self, post_id: int) -> None:
        """``IQDB::removeImage``: out of the buckets, ``avgl[0] = 0``, the row deleted."""
        row = self.rows.pop(post_id, None)
        if row is None:
            return
        iqdb_id, sig = row
        for c in range(sig.num_colors):
            for coef in sig.sig[c].tolist():
                self.buckets[(c, coef)].remove(iqdb_id)
        _, avgl = self.m_info[iqdb_id]
        self.m_info[iqdb_id] = (post_id, [F32(0), avgl[1], avgl[2]])

    def is_deleted(self, iqdb_id: int) -> bool:
        return not self.m_info[iqdb_id][1][0]

    def live(self) -> list[int]:
        """The internal ids ``isDeleted`` passes, ascending. The server scores every slot of
        ``m_info``, but a deleted slot never enters the queue, so its score is skipped here."""
        return sorted(i for i, _ in self.rows.values() if not self.is_deleted(i))

    def raw_scores(self, sig: Signature) -> tuple[dict[int, np.float32], np.float32]:
        """The ``scores`` (internal id -> score, lower is better) and ``scale`` of ``queryFromSignature``."""
        colors = sig.num_colors
        query_avgl = [F32(v) for v in sig.avglf]  # static_cast<Score>(signature.avglf[c])
        scores = {}
        for i in self.live():
            avgl = self.m_info[i][1]
            s = F32(0)
            for c in range(colors):
                s = F32(s + F32(WEIGHTS[0][c] * F32(abs(F32(avgl[c] - query_avgl[c])))))
            scores[i] = s
        scale = F32(0)
        for c in range(colors):  # channels outermost
            for b in range(NUM_COEFS):
                coef = int(sig.sig[c][b])
                bucket = self.buckets.get((c, coef))
                if not bucket:
                    continue
                weight = WEIGHTS[_bin(coef)][c]
                scale = F32(scale - weight)
                for index in bucket:
                    if index in scores:
                        scores[index] = F32(scores[index] - weight)
        return scores, scale

    def query(self, sig: Signature, numres: int) -> list[tuple[int, float]]:
        """``(post_id, score)`` best first, with the server's ``std::priority_queue`` of at most
        ``numres`` (a ``size_t``: below 0 means every image)."""
        scores, scale = self.raw_scores(sig)
        ids = list(scores)  # ascending internal ids
        limit = numres if numres >= 0 else len(ids)
        pq: PriorityQueue[tuple[int, np.float32]] = PriorityQueue(lambda a, b: a[1] < b[1])
        k = 0
        while len(pq) < limit and k < len(ids):
            pq.push((ids[k], scores[ids[k]]))
            k += 1
        for i in ids[k:]:
            if scores[i] < pq.top()[1]:
                pq.pop()
                pq.push((i, scores[i]))
        if scale != 0:
            scale = F32(F32(1.0) / scale)
        out = []
        while len(pq):
            iqdb_id, score = pq.pop()
            out.append((self.m_info[iqdb_id][0], float(F32(F32(score * F32(100)) * scale))))
        out.reverse()
        return out


class _ServerError(Exception):
    def __init__(self, exception: str, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.exception = exception
        self.message = message
        self.status = status


class _NoRoute(Exception):
    """404 with an empty body."""


class _Crash(Exception):
    """What crashes the real server: drop the connection unanswered and stop serving."""


def _stoi(text: str) -> int:
    """``std::stoi``: leading blanks, a sign and digits (the rest ignored), within ``int``."""
    match = re.match(r"\s*([+-]?\d+)", text)
    if not match:
        raise _ServerError("std::invalid_argument", "stoi")
    value = int(match.group(1))
    if not -MAX_INT - 1 <= value <= MAX_INT:
        raise _ServerError("std::out_of_range", "stoi")
    return value


def _multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        return {}
    boundary = b"--" + match.group(1).encode()
    fields: dict[str, bytes] = {}
    for part in body.split(boundary)[1:]:
        if part.startswith(b"--"):
            break
        head, _, data = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        if name:
            fields[name.group(1).decode()] = data[:-2] if data.endswith(b"\r\n") else data
    return fields


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        self._conn_key = id(self.connection)
        with self.server.lock:
            self.server.owner.requests_per_connection[self._conn_key] = 0

    def _count(self) -> None:
        owner = self.server.owner
        with self.server.lock:
            owner.requests_per_connection[self._conn_key] += 1
            owner.requests.append((self.command, self.path, dict(self.headers)))

    def _send(self, status: int, payload: Any) -> None:
        body = b"" if payload is None else json.dumps(payload, indent=4).encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self, fn: Any) -> None:
        self._count()
        owner = self.server.owner
        try:
            with self.server.lock:
                injected = owner.fail_next.pop(0) if owner.fail_next else None
            if injected:
                self._body()
                raise _ServerError(*injected)
            status, payload = fn()
        except _NoRoute:
            status, payload = 404, None
        except _Crash:
            self.close_connection = True
            threading.Thread(target=owner.stop, daemon=True).start()
            return
        except _ServerError as exc:
            if owner.flavor == "iqdb-rs" and exc.status == 500:
                status, payload = 400, {"error": "invalid_image" if "image" in exc.exception else "invalid_hash"}
            else:
                status, payload = exc.status, {"exception": exc.exception, "message": exc.message,
                                               "backtrace": f"(test server) {exc.exception}: {exc.message}"}
        self._send(status, payload)

    def do_GET(self) -> None:
        self._handle(self._get)

    def do_POST(self) -> None:
        self._handle(self._post)

    def do_DELETE(self) -> None:
        self._handle(self._delete)

    # -- routes -------------------------------------------------------------------------------------
    def _get(self) -> tuple[int, Any]:
        if urlsplit(self.path).path == "/status":
            with self.server.lock:
                return 200, {"images": len(self.server.owner.index.m_info)}
        raise _NoRoute

    def _delete(self) -> tuple[int, Any]:
        match = re.fullmatch(r"/images/(\d+)", urlsplit(self.path).path)
        if not match:
            raise _NoRoute
        post_id = _stoi(match.group(1))
        with self.server.lock:
            self.server.owner.index.remove(post_id)
        if self.server.owner.flavor == "iqdb-rs":
            return 200, {"post_id": post_id, "ids": []}
        return 200, {"post_id": post_id}

    @staticmethod
    def _signature_of(data: bytes) -> Signature:
        if data[:2] != b"\xff\xd8":
            raise _ServerError("iqdb::image_error", "Unsupported image format.")
        try:
            return compute_signature(data)
        except InvalidImageError:
            raise _ServerError("iqdb::image_error", "Could not read image.") from None

    def _params(self, url: Any, ctype: str, body: bytes) -> dict[str, str]:
        """cpp-httplib's ``has_param``/``get_param_value``: the query string, then a form body."""
        params = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if ctype.startswith("application/x-www-form-urlencoded"):
            for k, v in parse_qs(body.decode("latin-1"), keep_blank_values=True).items():
                params.setdefault(k, v[0])
        return params

    def _post(self) -> tuple[int, Any]:
        url = urlsplit(self.path)
        body = self._body()
        ctype = self.headers.get("Content-Type", "")
        owner = self.server.owner
        files = _multipart(ctype, body) if ctype.startswith("multipart/") else {}
        match = re.fullmatch(r"/images/(\d+)", url.path)
        if match:
            if "file" not in files:
                raise _ServerError("iqdb::param_error", "`POST /images/:id` requires a `file` param")
            post_id = _stoi(match.group(1))
            sig = self._signature_of(files["file"])
            with self.server.lock:
                iqdb_id = owner.index.add(post_id, sig)
            if owner.flavor == "iqdb-rs":
                return 200, {"id": iqdb_id}
            return 200, {"post_id": post_id, "hash": sig.hash, "signature": sig.to_dict()}
        if url.path != "/query":
            raise _NoRoute
        params = self._params(url, ctype, body)
        limit = _stoi(params["limit"]) if "limit" in params else (20 if owner.flavor == "iqdb-rs" else 10)
        if "hash" in params:
            try:
                sig = parse_hash(params["hash"])
            except InvalidHashError as exc:
                raise _ServerError("iqdb::param_error", str(exc)) from None
        elif "file" in files:
            sig = self._signature_of(files["file"])
        else:
            raise _ServerError("iqdb::param_error", "`POST /query` requires a `file`, `hash`, or `md5` param")
        with self.server.lock:
            if limit == 0 and owner.index.live():  # top() of an empty queue
                owner.limit_zero += 1
                raise _Crash
            out = [{"post_id": post_id, "score": score, "hash": owner.index.get(post_id).hash,
                    "signature": owner.index.get(post_id).to_dict()}
                   for post_id, score in owner.index.query(sig, limit)]
        return 200, out


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: IqdbTestServer
    lock: threading.Lock


class IqdbTestServer:
    """The test server: ``start()`` binds 127.0.0.1 (on ``port``, default a free one) in a thread."""

    def __init__(self, port: int = 0, flavor: str = "danbooru") -> None:
        assert flavor in ("danbooru", "iqdb-rs")
        self.port = port
        self.flavor = flavor
        self.index = ServerIndex()
        self.limit_zero = 0
        #: test hook: (exception, message, status) errors to answer the next requests with
        self.fail_next: list[tuple[str, str, int]] = []
        self.requests_per_connection: dict[int, int] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stop_lock = threading.Lock()
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> IqdbTestServer:
        httpd = _HTTPServer(("127.0.0.1", self.port), _Handler)
        httpd.owner = self
        httpd.lock = threading.Lock()
        self._stopped.clear()
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="iqdb-test-server", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """Until :meth:`stop` has closed the listening socket (a crash stops it from another thread)."""
        return not self._stopped.is_set()

    def stop(self) -> None:
        with self._stop_lock:
            httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
            self._stopped.set()

    def __enter__(self) -> IqdbTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
