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
  :meth:`RemoteIqdb.status` says so in its name (``capacity``);
* post ids are integers 0..2**31-1: an image id that is one goes as it is; any other (a file name, a
  hash) goes through ``ids``, the stable map of :mod:`mediaq.runtime.iqdb_ids` (``client.iqdb()`` and
  the worker's jobs pass one), and queries answer with the library's own ids.

Uses ``httpx`` (a dependency of JupyterLab; install it with ``pip install httpx`` otherwise).

>>> iqdb = RemoteIqdb("http://localhost:5588", ids=PostIdMap(client.redis))   # doctest: +SKIP
>>> (await iqdb.add(42, "thumbs/42.jpg")).hash[:5]                            # doctest: +SKIP
'iqdb_'
>>> (await iqdb.add("cat.png", "thumbs/cat.png.jpg")).post_id                 # doctest: +SKIP
2147483647
>>> await iqdb.query("thumbs/42.jpg", limit=3)                                # doctest: +SKIP
[Match(image_id=42, score=100.0, hash='iqdb_...'), Match(image_id='cat.png', ...)]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mediaq.errors import ConfigError, IqdbServerError, IqdbUnavailable
from mediaq.pure.iqdb.compute import ImageInput, as_signature, compute_signature, mirror_signature, to_jpeg_bytes
from mediaq.pure.iqdb.scoring import Match, merge_mirrored
from mediaq.pure.iqdb.signature import Signature, looks_like_hash, parse_hash
from mediaq.runtime.iqdb_ids import MAX_POST_ID, direct_post_id, encode_id

__all__ = ["MAX_POST_ID", "AddResult", "RemoteIqdb", "SyncRemoteIqdb"]


def _httpx() -> Any:
    try:
        import httpx
    except ImportError:  # pragma: no cover - httpx ships with jupyterlab
        raise ConfigError("the IQDB server client needs httpx: pip install httpx") from None
    return httpx


@dataclass(frozen=True)
class AddResult:
    """What adding an image returned: the image id, the server's post id for it and whether that came
    from the id map (``mapped``), the signature (the server's when it sends one), and whether mediaq's
    own signature of the same JPEG had the same hash (a bit-compatibility check; ``None`` when the
    server sends no hash, as iqdb-rs)."""

    image_id: int | str
    signature: Signature
    local_hash_matches: bool | None
    post_id: int | None = None
    mapped: bool = False

    @property
    def hash(self) -> str:
        return self.signature.hash


def _no_map(image_id: Any) -> ConfigError:
    return ConfigError(f"IQDB servers take integer post ids 0..{MAX_POST_ID}; the image id {image_id!r} needs the "
                       "id map: RemoteIqdb(url, ids=PostIdMap(redis)) (client.iqdb() and the worker pass one)")


def _check_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"limit must be an integer >= 1 (limit=0 crashes danbooru/iqdb), got {limit!r}")
    return limit


class _RemoteBase:
    """Request building and response parsing, shared by the async and sync faces (no I/O)."""

    def __init__(self, url: str, *, ids: Any = None, timeout: float = 30.0, delete_before_add: bool = False,
                 transport: Any = None) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"an IQDB server URL starts with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        #: the id map (:class:`~mediaq.runtime.iqdb_ids.PostIdMap` here, ``SyncPostIdMap`` on the sync
        #: face) for image ids that are no post id; without it only post ids are accepted
        self.ids = ids
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

    def _query_args(self, query: Signature | str | ImageInput, limit: int) -> dict[str, Any]:
        """``limit`` always (the servers' defaults differ), and a hash as a form field or the image as JPEG."""
        params = {"limit": str(limit)}
        if isinstance(query, Signature) or looks_like_hash(query):
            text = query.hash if isinstance(query, Signature) else parse_hash(query).hash  # type: ignore[arg-type]
            return {"params": params, "data": {"hash": text}}
        return {"params": params, "files": self._file(query)}

    @staticmethod
    def _prepare(image: ImageInput, signature: Signature | None, max_pixels: int | None) -> tuple[bytes, Signature]:
        """The JPEG to send and mediaq's signature of it (to compare with the server's hash)."""
        jpeg = to_jpeg_bytes(image, max_pixels=max_pixels)
        return jpeg, signature or compute_signature(jpeg, max_pixels=max_pixels)

    def _direct(self, image_id: Any) -> int:
        """The post id of an id that needs no map (checked; :class:`ConfigError` otherwise)."""
        encode_id(image_id)
        post_id = direct_post_id(image_id)
        if post_id is None:
            raise _no_map(image_id)
        return post_id

    @staticmethod
    def _add_result(image_id: Any, post_id: int, local: Signature, body: Any) -> AddResult:
        mapped = direct_post_id(image_id) is None
        server_hash = body.get("hash") if isinstance(body, dict) else None
        if not server_hash:  # iqdb-rs answers {"id": ...}: mediaq's own signature is the hash
            return AddResult(image_id, local, None, post_id, mapped)
        sig = parse_hash(server_hash)
        return AddResult(image_id, sig, sig.hash == local.hash, post_id, mapped)

    @staticmethod
    def _matches(body: Any) -> list[Match]:
        """The answer's matches, with post ids (translated by the caller when there is a map)."""
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
    def _named(matches: list[Match], image_ids: list[Any]) -> list[Match]:
        return [m._replace(image_id=i) for m, i in zip(matches, image_ids, strict=True)]

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

    async def _post_id(self, image_id: Any, allocate: bool) -> int | None:
        if self.ids is None:
            return self._direct(image_id)
        return await self.ids.post_id(image_id, allocate=allocate)

    async def add(self, image_id: int | str, image: ImageInput, *, signature: Signature | None = None,
                  max_pixels: int | None = None) -> AddResult:
        """``POST /images/<post id>`` (replaces an existing id on danbooru/iqdb).

        ``image_id``: a post id (an int 0..2**31-1), or any id when there is an id map (``ids``).
        ``signature``: mediaq's signature of the same JPEG bytes when already computed (a job does
        it in the process pool), else it is computed here, to check the server's hash against it.
        """
        jpeg, local = self._prepare(image, signature, max_pixels)
        post_id = await self._post_id(image_id, allocate=True)
        assert post_id is not None
        if self.delete_before_add:
            await self._request("DELETE", f"/images/{post_id}")
        body = await self._request("POST", f"/images/{post_id}", files=self._file(jpeg))
        return self._add_result(image_id, post_id, local, body)

    async def remove(self, image_id: int | str) -> None:
        """``DELETE /images/<post id>`` (the server answers the same for unknown ids; an id the map
        never saw was never sent, so nothing is asked)."""
        post_id = await self._post_id(image_id, allocate=False)
        if post_id is not None:
            await self._request("DELETE", f"/images/{post_id}")

    async def query(self, query: Signature | str | ImageInput, limit: int = 10, *,
                    mirror: bool = False, mirror_margin: float = 0.0) -> list[Match]:
        """``POST /query?limit=N`` with an image (sent as JPEG) or a hash (form field), best first,
        with the library's image ids (post ids translated through the map).

        ``mirror=True`` computes the signature locally and queries it and its mirror by hash,
        keeping each image's better score (:func:`~mediaq.pure.iqdb.scoring.merge_mirrored`).
        """
        limit = _check_limit(limit)
        if mirror:
            sig = as_signature(query)
            a = await self.query(sig, limit)
            b = await self.query(mirror_signature(sig), limit)
            return merge_mirrored(a, b, limit, mirror_margin)
        matches = self._matches(await self._request("POST", "/query", **self._query_args(query, limit)))
        if self.ids is None:
            return matches
        return self._named(matches, await self.ids.image_ids([m.image_id for m in matches]))

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

    def _post_id(self, image_id: Any, allocate: bool) -> int | None:
        if self.ids is None:
            return self._direct(image_id)
        return self.ids.post_id(image_id, allocate=allocate)

    def add(self, image_id: int | str, image: ImageInput, *, signature: Signature | None = None,
            max_pixels: int | None = None) -> AddResult:
        jpeg, local = self._prepare(image, signature, max_pixels)
        post_id = self._post_id(image_id, allocate=True)
        assert post_id is not None
        if self.delete_before_add:
            self._request("DELETE", f"/images/{post_id}")
        body = self._request("POST", f"/images/{post_id}", files=self._file(jpeg))
        return self._add_result(image_id, post_id, local, body)

    def remove(self, image_id: int | str) -> None:
        post_id = self._post_id(image_id, allocate=False)
        if post_id is not None:
            self._request("DELETE", f"/images/{post_id}")

    def query(self, query: Signature | str | ImageInput, limit: int = 10, *, mirror: bool = False,
              mirror_margin: float = 0.0) -> list[Match]:
        limit = _check_limit(limit)
        if mirror:
            sig = as_signature(query)
            return merge_mirrored(self.query(sig, limit), self.query(mirror_signature(sig), limit), limit,
                                  mirror_margin)
        matches = self._matches(self._request("POST", "/query", **self._query_args(query, limit)))
        if self.ids is None:
            return matches
        return self._named(matches, self.ids.image_ids([m.image_id for m in matches]))

    def status(self) -> int:
        return self._capacity(self._request("GET", "/status"))

    capacity = status

