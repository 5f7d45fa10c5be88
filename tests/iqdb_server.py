"""A small IQDB HTTP server for tests, following the documented danbooru/iqdb API and its quirks
(DESIGN.md section 4), on a real loopback socket:

* ``POST /images/<id>`` (multipart ``file``, JPEG only: anything else is HTTP 500 "Unsupported image
  format.") -> ``{"post_id", "hash", "signature": {"avglf", "sig"}}``; replaces an existing id;
* ``DELETE /images/<id>`` -> ``{"post_id"}``, also for unknown ids;
* ``POST /query?limit=N`` with multipart ``file`` or a form-urlencoded ``hash`` -> a best-first list of
  ``{post_id, score, hash, signature}``; a POST with no body is HTTP 400; ``limit=0`` is an error
  (it crashes the real server; here HTTP 500, and it is counted in ``limit_zero``);
* ``GET /status`` -> ``{"images": N}`` where N is the capacity of the server's array (grown by
  50,000 past the highest internal id), not a count;
* errors are HTTP 500 with ``{"exception", "message", "backtrace"}``.

``flavor="iqdb-rs"`` answers like iqdb-rs instead: ``POST /images/<id>`` -> ``{"id": <internal id>}``
(no hash), ``DELETE`` -> ``{"post_id", "ids"}``, errors as HTTP 400 ``{"error": "invalid_image"}``, a
default limit of 20 (its re-add keeping the old entry is not modelled).

It speaks HTTP/1.1 with keep-alive, so a client that reuses connections can: ``requests_per_connection``
records how many requests each connection carried. Signatures and scores come from mediaq's own
implementation (the thing under test is the client's protocol handling, not the scoring).

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

from mediaq.errors import InvalidHashError, InvalidImageError
from mediaq.pure.iqdb.compute import compute_signature
from mediaq.pure.iqdb.scoring import LocalIndex
from mediaq.pure.iqdb.signature import parse_hash

__all__ = ["IqdbTestServer"]


class _ServerError(Exception):
    def __init__(self, exception: str, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.exception = exception
        self.message = message
        self.status = status


def _multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise _ServerError("imgdb::param_error", "multipart body without a boundary")
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
        body = json.dumps(payload, indent=4).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self, fn: Any) -> None:
        self._count()
        try:
            with self.server.lock:
                injected = self.server.owner.fail_next.pop(0) if self.server.owner.fail_next else None
            if injected:
                self._body()
                raise _ServerError(*injected)
            status, payload = fn()
        except _ServerError as exc:
            if self.server.owner.flavor == "iqdb-rs" and exc.status == 500:
                status, payload = 400, {"error": "invalid_image" if "image" in exc.exception else "invalid_hash"}
            else:
                status, payload = exc.status, {"exception": exc.exception, "message": exc.message,
                                               "backtrace": ["(test server)"]}
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
            return 200, {"images": self.server.owner.capacity}
        return 404, {"exception": "not_found", "message": f"no route GET {self.path}", "backtrace": []}

    def _delete(self) -> tuple[int, Any]:
        match = re.fullmatch(r"/images/(\d+)", urlsplit(self.path).path)
        if not match:
            return 404, {"exception": "not_found", "message": f"no route DELETE {self.path}", "backtrace": []}
        post_id = int(match.group(1))
        with self.server.lock:
            self.server.owner.index.remove(post_id)
        if self.server.owner.flavor == "iqdb-rs":
            return 200, {"post_id": post_id, "ids": []}
        return 200, {"post_id": post_id}

    def _signature_of(self, data: bytes) -> Any:
        if data[:2] != b"\xff\xd8":
            raise _ServerError("imgdb::image_error", "Unsupported image format.")
        try:
            return compute_signature(data)
        except InvalidImageError:
            raise _ServerError("imgdb::image_error", "Could not read image.") from None

    def _post(self) -> tuple[int, Any]:
        url = urlsplit(self.path)
        body = self._body()
        ctype = self.headers.get("Content-Type", "")
        owner = self.server.owner
        match = re.fullmatch(r"/images/(\d+)", url.path)
        if match:
            post_id = int(match.group(1))
            fields = _multipart(ctype, body) if ctype.startswith("multipart/") else {}
            if "file" not in fields:
                raise _ServerError("imgdb::param_error", "`POST /images/:id` requires a `file` param")
            sig = self._signature_of(fields["file"])
            with self.server.lock:
                owner.index.add(post_id, sig)
                owner.next_internal_id += 1
                if owner.next_internal_id >= owner.capacity:
                    owner.capacity = owner.next_internal_id + 50000
            if owner.flavor == "iqdb-rs":
                return 200, {"id": owner.next_internal_id}
            return 200, {"post_id": post_id, "hash": sig.hash, "signature": sig.to_dict()}
        if url.path != "/query":
            return 404, {"exception": "not_found", "message": f"no route POST {self.path}", "backtrace": []}
        if not body:
            return 400, {"exception": "bad_request", "message": "POST without a body", "backtrace": []}
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        limit = int(params.get("limit", 20 if owner.flavor == "iqdb-rs" else 10))
        if limit == 0:
            with self.server.lock:
                owner.limit_zero += 1
            raise _ServerError("std::out_of_range", "limit=0 (the real server crashes here)")
        if ctype.startswith("multipart/"):
            fields = _multipart(ctype, body)
            if "file" not in fields:
                raise _ServerError("imgdb::param_error", "`POST /query` requires a `file` or `hash` param")
            sig = self._signature_of(fields["file"])
        else:
            form = {k: v[-1] for k, v in parse_qs(body.decode("latin-1")).items()}
            if "hash" not in form:
                raise _ServerError("imgdb::param_error", "`POST /query` requires a `file` or `hash` param")
            try:
                sig = parse_hash(form["hash"])
            except InvalidHashError as exc:
                raise _ServerError("imgdb::param_error", str(exc)) from None
        with self.server.lock:
            matches = owner.index.query(sig, limit)
            out = []
            for m in matches:
                target = owner.index.get(m.image_id)
                out.append({"post_id": m.image_id, "score": m.score, "hash": m.hash, "signature": target.to_dict()})
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
        self.index = LocalIndex()
        self.capacity = 0
        self.next_internal_id = 0
        self.limit_zero = 0
        #: test hook: (exception, message, status) errors to answer the next requests with
        self.fail_next: list[tuple[str, str, int]] = []
        self.requests_per_connection: dict[int, int] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> IqdbTestServer:
        httpd = _HTTPServer(("127.0.0.1", self.port), _Handler)
        httpd.owner = self
        httpd.lock = threading.Lock()
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="iqdb-test-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> IqdbTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
