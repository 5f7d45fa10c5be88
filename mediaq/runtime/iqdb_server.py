"""A client for real IQDB servers (danbooru/iqdb, and iqdb-rs which has the same routes).

The servers' quirks, handled here so callers never meet them:

* JPEG only: anything else is converted to JPEG first (:func:`~mediaq.pure.iqdb.compute.to_jpeg_bytes`);
* ``limit`` must be at least 1 (``limit=0`` crashes danbooru/iqdb), and is always sent (the two
  servers have different defaults);
* a new connection per request (keep-alive costs about 40 ms a request on danbooru/iqdb): no
  connection is kept, and ``Connection: close`` is sent;
* errors come as HTTP 500 with ``{"exception", "message", "backtrace"}`` (danbooru/iqdb) or a 4xx
  with ``{"error": ...}`` (iqdb-rs): both become :class:`IqdbServerError` with the server's words;
  an unreachable server is :class:`IqdbUnavailable`;
* ``GET /status`` returns ``{"images": N}`` where N is an array *capacity*, not a count:
  :meth:`RemoteIqdb.status` says so in its name (``capacity``).

Uses ``httpx`` (a dependency of JupyterLab; install it with ``pip install httpx`` otherwise).

>>> iqdb = RemoteIqdb("http://localhost:5588")        # doctest: +SKIP
>>> (await iqdb.add(42, "thumbs/42.jpg")).hash[:5]     # doctest: +SKIP
'iqdb_'
>>> await iqdb.query("thumbs/42.jpg", limit=3)         # doctest: +SKIP
[Match(image_id=42, score=100.0, hash='iqdb_...')]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mediaq.errors import ConfigError, IqdbServerError, IqdbUnavailable
from mediaq.pure.iqdb.compute import ImageInput, as_signature, compute_signature, mirror_signature, to_jpeg_bytes
from mediaq.pure.iqdb.scoring import Match, merge_mirrored
from mediaq.pure.iqdb.signature import Signature, looks_like_hash, parse_hash

__all__ = ["AddResult", "RemoteIqdb", "SyncRemoteIqdb"]

MAX_POST_ID = 2**32 - 1  # the servers' post ids are uint32


def _httpx() -> Any:
    try:
        import httpx
    except ImportError:  # pragma: no cover - httpx ships with jupyterlab
        raise ConfigError("the IQDB server client needs httpx: pip install httpx") from None
    return httpx


@dataclass(frozen=True)
class AddResult:
    """What adding an image returned: the id, the signature (the server's when it sends one), and
    whether mediaq's own signature of the same JPEG had the same hash (a bit-compatibility check;
    ``None`` when the server sends no hash, as iqdb-rs)."""

    image_id: int
    signature: Signature
    local_hash_matches: bool | None

    @property
    def hash(self) -> str:
        return self.signature.hash


def _check_id(image_id: Any) -> int:
    if isinstance(image_id, bool) or not isinstance(image_id, int) or not 0 <= image_id <= MAX_POST_ID:
        raise ConfigError(f"IQDB servers take integer post ids 0..{MAX_POST_ID}, got {image_id!r}")
    return image_id


def _check_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"limit must be an integer >= 1 (limit=0 crashes danbooru/iqdb), got {limit!r}")
    return limit


class _RemoteBase:
    """Request building and response parsing, shared by the async and sync faces (no I/O)."""

    def __init__(self, url: str, *, timeout: float = 30.0, delete_before_add: bool = False,
                 transport: Any = None) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"an IQDB server URL starts with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        #: iqdb-rs keeps the old entry when an id is re-added; set this to delete it first.
        self.delete_before_add = delete_before_add
        self._transport = transport
        self._ssl: Any = None

    def _verify(self) -> Any:
        """No TLS for http://; for https:// one SSL context per client object (building one costs
        about 20 ms, and each request opens a new connection)."""
        if not self.url.startswith("https://"):
            return False
        if self._ssl is None:
            import ssl

            try:
                import certifi

                self._ssl = ssl.create_default_context(cafile=certifi.where())
            except ImportError:  # pragma: no cover
                self._ssl = ssl.create_default_context()
        return self._ssl

    def _client_kwargs(self) -> dict[str, Any]:
        httpx = _httpx()
        kwargs: dict[str, Any] = {
            "base_url": self.url,
            "timeout": self.timeout,
            "limits": httpx.Limits(max_keepalive_connections=0),
            "headers": {"Connection": "close", "Accept": "application/json"},
            "verify": self._verify(),
        }
        if self._transport is not None:
            kwargs["transport"] = self._transport
        return kwargs

    @staticmethod
    def _file(image: ImageInput) -> dict[str, Any]:
        return {"file": ("image.jpg", to_jpeg_bytes(image), "image/jpeg")}

    def _unavailable(self, method: str, path: str, exc: Exception) -> IqdbUnavailable:
        return IqdbUnavailable(f"IQDB server {self.url} unreachable ({method} {path}): "
                               f"{type(exc).__name__}: {exc}")

    def _parse(self, method: str, path: str, response: Any) -> Any:
        try:
            body = response.json()
        except (json.JSONDecodeError, ValueError):
            body = None
        if response.status_code >= 400:
            exception = server_message = backtrace = None
            if isinstance(body, dict):
                exception = body.get("exception")
                server_message = body.get("message")
                backtrace = body.get("backtrace")
                if server_message is None and "error" in body:
                    server_message = json.dumps(body["error"]) if not isinstance(body["error"], str) else body["error"]
            detail = ": ".join(str(p) for p in (exception, server_message) if p) or response.text[:200]
            raise IqdbServerError(f"IQDB server error (HTTP {response.status_code}) on {method} {path}: {detail}",
                                  status=response.status_code, exception=exception, server_message=server_message,
                                  backtrace=backtrace, url=self.url)
        if body is None:
            raise IqdbServerError(f"IQDB server sent a non-JSON answer (HTTP {response.status_code}) on "
                                  f"{method} {path}: {response.text[:200]!r}", status=response.status_code,
                                  url=self.url)
        return body

    @staticmethod
    def _add_result(image_id: int, local: Signature, body: Any) -> AddResult:
        server_hash = body.get("hash") if isinstance(body, dict) else None
        if not server_hash:  # iqdb-rs answers {"id": ...}: mediaq's own signature is the hash
            return AddResult(image_id, local, None)
        sig = parse_hash(server_hash)
        return AddResult(image_id, sig, sig.hash == local.hash)

    @staticmethod
    def _matches(body: Any) -> list[Match]:
        if not isinstance(body, list):
            raise IqdbServerError(f"IQDB query answer is not a list: {str(body)[:200]}", status=200)
        out = []
        for item in body:
            sig_hash = item.get("hash")
            if not sig_hash and "signature" in item:
                sig_hash = Signature.from_dict(item["signature"]).hash
            out.append(Match(int(item["post_id"]), float(item["score"]), sig_hash or ""))
        return out

    @staticmethod
    def _capacity(body: Any) -> int:
        if not isinstance(body, dict) or "images" not in body:
            raise IqdbServerError(f"IQDB /status answer has no 'images': {str(body)[:200]}", status=200)
        return int(body["images"])


class RemoteIqdb(_RemoteBase):
    """Async client of an IQDB server. Each call opens and closes its own connection.

    ``transport`` is for tests (an ``httpx`` transport); errors are :class:`IqdbUnavailable`
    (retry later) and :class:`IqdbServerError` (the server refused).
    """

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        httpx = _httpx()
        try:
            async with httpx.AsyncClient(**self._client_kwargs()) as client:
                response = await client.request(method, path, **kwargs)
        except (httpx.TransportError, OSError) as exc:
            raise self._unavailable(method, path, exc) from exc
        return self._parse(method, path, response)

    async def add(self, image_id: int, image: ImageInput, *, signature: Signature | None = None) -> AddResult:
        """``POST /images/<id>`` (replaces an existing id on danbooru/iqdb).

        ``signature``: mediaq's signature of the same JPEG bytes when already computed (a job does
        it in the process pool), else it is computed here, to check the server's hash against it.
        """
        image_id = _check_id(image_id)
        jpeg = to_jpeg_bytes(image)
        local = signature or compute_signature(jpeg)
        if self.delete_before_add:
            await self.remove(image_id)
        body = await self._request("POST", f"/images/{image_id}", files=self._file(jpeg))
        return self._add_result(image_id, local, body)

    async def remove(self, image_id: int) -> None:
        """``DELETE /images/<id>`` (the server answers the same for unknown ids)."""
        await self._request("DELETE", f"/images/{_check_id(image_id)}")

    async def query(self, query: Signature | str | ImageInput, limit: int = 10, *,
                    mirror: bool = False, mirror_margin: float = 0.0) -> list[Match]:
        """``POST /query?limit=N`` with an image (sent as JPEG) or a hash (form field), best first.

        ``mirror=True`` computes the signature locally and queries it and its mirror by hash,
        keeping each image's better score (:func:`~mediaq.pure.iqdb.scoring.merge_mirrored`).
        """
        limit = _check_limit(limit)
        if mirror:
            sig = as_signature(query)
            a = await self.query(sig, limit)
            b = await self.query(mirror_signature(sig), limit)
            return merge_mirrored(a, b, limit, mirror_margin)
        params = {"limit": str(limit)}
        if isinstance(query, Signature) or looks_like_hash(query):
            text = query.hash if isinstance(query, Signature) else parse_hash(query).hash  # type: ignore[arg-type]
            body = await self._request("POST", "/query", params=params, data={"hash": text})
        else:
            body = await self._request("POST", "/query", params=params, files=self._file(query))
        return self._matches(body)

    async def status(self) -> int:
        """``GET /status``: the server's array *capacity* (not a count of images)."""
        return self._capacity(await self._request("GET", "/status"))

    capacity = status


class SyncRemoteIqdb(_RemoteBase):
    """The same client, synchronous, method for method."""

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        httpx = _httpx()
        try:
            with httpx.Client(**self._client_kwargs()) as client:
                response = client.request(method, path, **kwargs)
        except (httpx.TransportError, OSError) as exc:
            raise self._unavailable(method, path, exc) from exc
        return self._parse(method, path, response)

    def add(self, image_id: int, image: ImageInput, *, signature: Signature | None = None) -> AddResult:
        image_id = _check_id(image_id)
        jpeg = to_jpeg_bytes(image)
        local = signature or compute_signature(jpeg)
        if self.delete_before_add:
            self.remove(image_id)
        body = self._request("POST", f"/images/{image_id}", files=self._file(jpeg))
        return self._add_result(image_id, local, body)

    def remove(self, image_id: int) -> None:
        self._request("DELETE", f"/images/{_check_id(image_id)}")

    def query(self, query: Signature | str | ImageInput, limit: int = 10, *, mirror: bool = False,
              mirror_margin: float = 0.0) -> list[Match]:
        limit = _check_limit(limit)
        if mirror:
            sig = as_signature(query)
            return merge_mirrored(self.query(sig, limit), self.query(mirror_signature(sig), limit), limit,
                                  mirror_margin)
        params = {"limit": str(limit)}
        if isinstance(query, Signature) or looks_like_hash(query):
            text = query.hash if isinstance(query, Signature) else parse_hash(query).hash  # type: ignore[arg-type]
            body = self._request("POST", "/query", params=params, data={"hash": text})
        else:
            body = self._request("POST", "/query", params=params, files=self._file(query))
        return self._matches(body)

    def status(self) -> int:
        return self._capacity(self._request("GET", "/status"))

    capacity = status

