"""Connections to Redis, made one way everywhere: URLs with a database, timeouts so nothing hangs,
and retries that ride out a restart of the server or a Sentinel failover.

Two kinds of URL name a server:

* ``redis://[[user]:password@]host:port[/db]`` (``rediss://`` for TLS, ``unix://``): one server;
* ``redis+sentinel://[[user]:password@]host:port[,host:port...]/<primary name>[/db]`` (``rediss+sentinel://``
  for TLS): the Sentinels watching a primary and its replicas. Every connection asks them where the
  primary is, so after a failover clients and workers reconnect to the promoted replica by
  themselves. The password is the data nodes'; Sentinels that have their own take
  ``?sentinel_password=...`` (and ``sentinel_username``).

TLS: a ``rediss://`` (or ``rediss+sentinel://``) URL, with redis-py's query parameters for the
certificates, the same for the notebook, the workers, the CLI and the dashboard::

    rediss://:PASSWORD@10.0.0.2:6380/?ssl_ca_certs=/etc/mediaq/ca.pem
    rediss://:PASSWORD@redis.lan:6380/?ssl_ca_certs=ca.pem&ssl_certfile=client.pem&ssl_keyfile=client.key

``ssl_cert_reqs`` (``required``, the default, or ``none``) and ``ssl_check_hostname`` (``true``/``false``)
are read too; with Sentinels they apply to the Sentinels and to the data nodes alike.

* :func:`with_db`, :func:`ping`, :func:`tls_options`, :class:`SentinelURL`;
* :func:`redis_retry` and :func:`retrying_pool`: the retry policy and a pool whose connecting is retried too;
* :func:`client_pool`: a pool for either kind of URL; :func:`sync_client`, :func:`async_client`;
  :func:`redis_settings_for`: arq's ``RedisSettings``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from mediaq.errors import ConfigError, RedisUnavailable
from mediaq.runtime.settings import Settings, redact_url

__all__ = ["SENTINEL_SCHEMES", "WORKER_RETRIES", "SentinelURL", "async_client", "client_pool", "honour_cancel",
           "is_sentinel_url",
           "ping", "redis_retry", "redis_settings_for", "retrying_pool", "single_attempt", "sync_client", "tls_options",
           "with_db",
           "worker_retry"]

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
#: TLS parameters of a ``rediss://`` URL's query, as redis-py and arq's ``RedisSettings`` name them
TLS_PARAMETERS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names Sentinels (``redis+sentinel://``) rather than one server."""
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


@dataclass(frozen=True)
class SentinelURL:
    """A ``redis+sentinel://`` URL taken apart (see the module doc).

    >>> u = SentinelURL.parse("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2/mediaq/1")
    >>> u.sentinels, u.master, u.db, u.password
    ((('10.0.0.1', 26379), ('10.0.0.2', 26379)), 'mediaq', 1, 'pw')
    >>> u.with_db(3)
    'redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/mediaq/3'
    """

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never printed
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    ssl: bool = False
    #: TLS parameters (:data:`TLS_PARAMETERS`) from the query, for the Sentinels and the data nodes
    tls: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() not in SENTINEL_SCHEMES:
            raise ConfigError(f"{redact_url(url)!r} is not a redis+sentinel:// URL")
        rest, _, query = rest.partition("?")
        netloc, _, path = rest.partition("/")
        userinfo, at, hosts = netloc.rpartition("@")
        username = password = None
        if at:
            user, colon, secret = userinfo.partition(":")
            username, password = unquote(user) or None, (unquote(secret) if colon else None)
        sentinels = []
        for part in filter(None, hosts.split(",")):
            if part.startswith("["):  # [::1]:26379
                host, _, tail = part[1:].partition("]")
                port = tail[1:] if tail.startswith(":") else ""
            else:
                host, _, port = part.partition(":")
            try:
                sentinels.append((host, int(port or 26379)))
            except ValueError:
                raise ConfigError(f"{redact_url(url)!r}: {part!r} is not host:port") from None
        segments = [s for s in path.split("/") if s]
        if not sentinels or not segments or len(segments) > 2:
            raise ConfigError(f"{redact_url(url)!r}: expected redis+sentinel://[:password@]host:port[,host:port...]"
                              "/<primary name>[/db]")
        db = None
        if len(segments) == 2:
            if not segments[1].isdigit():
                raise ConfigError(f"{redact_url(url)!r}: the database {segments[1]!r} is not a number")
            db = int(segments[1])
        options = {k: v[-1] for k, v in parse_qs(query).items()}
        known = {"sentinel_password", "sentinel_username", *TLS_PARAMETERS}
        unknown = set(options) - known
        if unknown:
            raise ConfigError(f"{redact_url(url)!r}: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
        ssl = scheme.lower().startswith("rediss")
        tls = tuple((k, options[k]) for k in TLS_PARAMETERS if k in options)
        if tls and not ssl:
            raise ConfigError(f"{redact_url(url)!r}: TLS options need rediss+sentinel://")
        _check_tls_files(dict(tls))
        return cls(tuple(sentinels), unquote(segments[0]), db, username, password,
                   options.get("sentinel_username"), options.get("sentinel_password"), ssl, tls)

    def with_db(self, db: int) -> str:
        scheme = "rediss+sentinel" if self.ssl else "redis+sentinel"
        auth = ""
        if self.username or self.password is not None:
            auth = quote(self.username or "", safe="")
            if self.password is not None:
                auth += ":" + quote(self.password, safe="")
            auth += "@"
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels)
        pairs = [("sentinel_username", self.sentinel_username), ("sentinel_password", self.sentinel_password),
                 *self.tls]
        query = "&".join(f"{k}={quote(v, safe='/')}" for k, v in pairs if v)
        return f"{scheme}://{auth}{hosts}/{quote(self.master, safe='')}/{db}" + (f"?{query}" if query else "")

    def data_kwargs(self) -> dict[str, Any]:
        """Connection arguments for the primary and replicas (the database comes from the pool's user)."""
        return {"username": self.username, "password": self.password, "ssl": self.ssl, "db": self.db or 0,
                **self._tls_kwargs()}

    def sentinel_kwargs(self, timeout: float) -> dict[str, Any]:
        """Connection arguments for the Sentinels themselves."""
        return {"username": self.sentinel_username, "password": self.sentinel_password, "ssl": self.ssl,
                "socket_connect_timeout": timeout, "socket_timeout": timeout, **self._tls_kwargs()}

    def _tls_kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.tls)
        if "ssl_check_hostname" in out:
            out["ssl_check_hostname"] = out["ssl_check_hostname"].lower() in ("1", "true", "yes")
        return out

    def describe(self) -> str:
        """``primary 'mediaq' via 3 Sentinels (a:1, b:2, c:3)``: what the URL points at, no secrets."""
        hosts = ", ".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"primary {self.master!r} via {len(self.sentinels)} Sentinel(s) ({hosts})"


def with_db(url: str, db: int, *, keep_explicit: bool = True) -> str:
    """``url`` on database ``db``; a db the URL names itself (``redis://host/3``) wins if ``keep_explicit``.

    >>> with_db("redis+sentinel://s1:26379/mediaq", 1)
    'redis+sentinel://s1:26379/mediaq/1'
    """
    if is_sentinel_url(url):
        target = SentinelURL.parse(url)
        return url if keep_explicit and target.db is not None else target.with_db(db)
    parts = urlsplit(url)
    if keep_explicit and parts.path.strip("/"):
        return url
    return parts._replace(path=f"/{db}").geturl()


def honour_cancel() -> None:
    """Raise ``CancelledError`` if this task was asked to stop and the request went missing.

    A cancel lands at the task's next await, unless a library swallows it on the way: redis-py's
    writes use ``asyncio.wait_for``, which on Python 3.11 returns normally when the write it waits for
    completes in the same loop turn as the cancel. ``Task.cancelling()`` still counts the request, so
    checking it at each turn of a loop that talks to Redis (a bulk enqueue's chunks, ``batch.wait()``'s
    polls, a monitor's refreshes) means a stop button is always obeyed, at the latest one turn later.
    Measured here: about half of the cancels that land during a Redis command on a pool with a socket
    timeout are lost that way.
    """
    import asyncio

    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


def tls_options(url: str) -> dict[str, Any]:
    """The TLS settings of a ``rediss://`` URL (empty for ``redis://``); a certificate file that is not
    there is a :class:`~mediaq.errors.ConfigError` now rather than a handshake failure later.

    >>> tls_options("rediss://:pw@h:6380/1?ssl_ca_certs=/dev/null&ssl_check_hostname=true")
    {'ssl': True, 'ssl_ca_certs': '/dev/null', 'ssl_check_hostname': True}
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return {}
    out: dict[str, Any] = {"ssl": True}
    for name, values in parse_qs(parts.query).items():
        if name in TLS_PARAMETERS:
            out[name] = values[-1]
    _check_tls_files(out)
    if "ssl_check_hostname" in out:
        out["ssl_check_hostname"] = out["ssl_check_hostname"].lower() in ("1", "true", "yes")
    return out


def _check_tls_files(options: dict[str, Any]) -> None:
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        value = options.get(name)
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"{name}={value!r} in the Redis URL is not a file (give the path of the PEM file "
                              "on this machine)")


def ping(url: str, timeout: float = 2.0) -> None:
    """PING ``url`` (through its Sentinels for a ``redis+sentinel://`` URL) synchronously;
    :class:`RedisUnavailable` with a clear reason if it fails."""
    import redis
    from redis.sentinel import MasterNotFoundError

    tls_options(url)  # a missing certificate file says so
    client = sync_client(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise RedisUnavailable(f"Redis at {redact_url(url)} rejected the password ({exc}); check MEDIAQ_REDIS_URL "
                               "or, for the embedded server, its state folder") from None
    except MasterNotFoundError as exc:
        raise RedisUnavailable(f"no Sentinel of {redact_url(url)} names a reachable primary ({exc}). Are the "
                               "Sentinels running, and is the primary's name right?") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "AUTH" in str(exc):
            raise RedisUnavailable(f"Redis at {redact_url(url)} needs a password ({exc})") from None
        raise RedisUnavailable(f"Redis at {redact_url(url)} answered with an error: {exc}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        if "SSL" in str(exc) or "certificate" in str(exc):
            raise RedisUnavailable(f"TLS with Redis at {redact_url(url)} failed ({exc}); check the URL's "
                                   "ssl_ca_certs (the CA that signed the server's certificate) and, if the "
                                   "server asks for one, ssl_certfile/ssl_keyfile") from None
        raise RedisUnavailable(f"cannot reach Redis at {redact_url(url)} within {timeout:g} s ({exc}). "
                               "Is the server running? `mediaq redis status` tells for the embedded one; "
                               "for another server check MEDIAQ_REDIS_URL.") from None
    finally:
        client.close()


_IN_RETRY: contextvars.ContextVar[bool] = contextvars.ContextVar("mediaq_in_redis_retry", default=False)


@contextlib.contextmanager
def single_attempt() -> Iterator[None]:
    """Redis calls made inside are tried once (with :func:`redis_retry`'s policy): for a call that must
    not run twice, because its reply can be lost after the server ran it and a second run would
    answer differently. The failure is raised; redis-py has closed the connection it was on. Tasks
    created inside inherit it: create them outside."""
    token = _IN_RETRY.set(True)
    try:
        yield
    finally:
        _IN_RETRY.reset(token)


def redis_retry(retries: int = 8, cap: float = 1.0) -> Any:
    """The retry policy of mediaq's Redis clients: ``retries`` attempts, 0.1, 0.2, 0.4, 0.8 s then
    ``cap`` s apart (8 retries: about 5.5 s), so a restart of the server is ridden out.

    Two fixes over a plain ``redis.asyncio.retry.Retry``: a refused connection (a bare ``OSError``
    when redis-py reconnects a pooled connection, outside the command's own retry) is retried too,
    instead of failing the call at once; and retries do not nest (a reconnect inside a retried
    command is tried once, the command's retry waits), so a real outage fails after the one budget,
    not its square.

    >>> type(redis_retry(8)).__name__
    'OutermostRetry'
    """
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return _outermost(Retry)(ExponentialBackoff(cap=cap, base=0.05), retries,
                             supported_errors=(RedisConnectionError, RedisTimeoutError, OSError))


@functools.cache
def _outermost(base: type) -> type:
    class OutermostRetry(base):  # type: ignore[valid-type,misc]
        __slots__ = ()

        async def call_with_retry(self, do: Any, fail: Any) -> Any:
            if _IN_RETRY.get():  # inside a retried call: that one retries
                return await do()
            token = _IN_RETRY.set(True)
            try:
                try:  # the first attempt on its own: the policy's loop only once it has failed (issue 17)
                    return await do()
                except self._supported_errors as error:
                    failed = [error]

                async def again() -> Any:  # the policy's loop, counting the failure above as its first
                    if failed:
                        raise failed.pop()
                    return await do()

                return await super().call_with_retry(again, fail)
            finally:
                _IN_RETRY.reset(token)

    return OutermostRetry


def retrying_pool(url: str, **kwargs: Any) -> Any:
    """A ``redis.asyncio`` connection pool for ``url`` whose *connecting* is retried too.

    redis-py retries a command (with the pool's ``retry``), but takes the connection for it from the
    pool first, outside that retry: a pooled connection that must reconnect, and whose handshake
    (``AUTH``) meets a server that is just restarting, fails the call at once. Here getting a
    connection is retried with the same policy (pass ``retry=redis_retry(...)``). For a
    ``redis+sentinel://`` URL the pool asks the Sentinels for the primary at each (re)connect: a
    Sentinel-managed connection that meets a demoted primary (``READONLY``) disconnects, and the
    retry finds the new one.

    >>> pool = retrying_pool("redis://127.0.0.1:1/0", retry=redis_retry(2))
    >>> type(pool).__name__
    'RetryingConnectionPool'
    """
    if not is_sentinel_url(url):
        return _retrying_pool_class().from_url(url, **kwargs)
    from redis.asyncio.sentinel import Sentinel

    target = SentinelURL.parse(url)
    timeout = kwargs.get("socket_connect_timeout") or 2.0
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=target.sentinel_kwargs(timeout))
    return _retrying_sentinel_pool_class()(target.master, sentinel, **{**target.data_kwargs(), **kwargs})


class _RetriedConnecting:
    """Mixin: ``get_connection`` retried with the pool's ``retry`` (see :func:`retrying_pool`); its
    connections skip the socket timeout's timer where no I/O can wait (see :func:`_untimed_fast_path`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection_class = _untimed_fast_path(self.connection_class)  # type: ignore[attr-defined]

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        retry = self.connection_kwargs.get("retry")  # type: ignore[attr-defined]
        get = super().get_connection  # type: ignore[misc]
        if retry is None:
            return await get(*args, **kwargs)

        async def no_cleanup(error: Exception) -> None:  # get_connection released it already
            return None

        return await retry.call_with_retry(lambda: get(*args, **kwargs), no_cleanup)


@functools.cache
def _untimed_fast_path(base: type) -> type:
    """``base`` (a ``redis.asyncio`` connection class) with :class:`_UntimedFastPath` under its own methods
    (so a Sentinel-managed connection still turns ``READONLY`` into a reconnect)."""
    from redis.asyncio.connection import AbstractConnection

    if not issubclass(base, AbstractConnection) or issubclass(base, _fast_path_mixin()):
        return base
    return type(base.__name__, (base, _fast_path_mixin()), {"__module__": __name__})


@functools.cache
def _fast_path_mixin() -> type:
    """A socket timeout costs a timer per read (``asyncio.timeout``) and a task per write
    (``asyncio.wait_for``) in redis-py: about 15 per no-op job, a fifth of the worker's CPU (issue 17).
    Neither can fire where nothing waits: a reply already in the parser's buffer (the replies of a
    pipeline after its first), a write the kernel took whole. Those skip the timer; everything else,
    including every read or write that can wait, goes through redis-py's timed path unchanged, so a
    dead link still fails after ``socket_timeout``. redis-py 5.x internals (the hiredis parser's
    reader): without them (another version, no hiredis) every call takes redis-py's own path."""
    import asyncio

    from redis.asyncio.connection import AbstractConnection
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    try:
        from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
    except ImportError:  # another redis-py: its own path
        NOT_ENOUGH_DATA, _AsyncHiredisParser = object(), ()

    class _UntimedFastPath(AbstractConnection):
        async def read_response(self, disable_decoding: bool = False, timeout: float | None = None, *,
                                disconnect_on_error: bool = True, push_request: bool | None = False) -> Any:
            parser = self._parser
            reader = getattr(parser, "_reader", None)
            if (timeout is None and reader is not None and isinstance(parser, _AsyncHiredisParser)
                    and parser._connected):
                response = reader.gets(False) if disable_decoding else reader.gets()
                if response is not NOT_ENOUGH_DATA:  # buffered: no I/O, so no timer (as the parser does)
                    error = response if isinstance(response, RedisConnectionError) else (
                        response[0] if isinstance(response, list) and response
                        and isinstance(response[0], RedisConnectionError) else None)
                    if error is not None:
                        if disconnect_on_error:
                            await self.disconnect(nowait=True)
                        raise error
                    if self.health_check_interval:
                        self.next_health_check = asyncio.get_running_loop().time() + self.health_check_interval
                    if isinstance(response, ResponseError):
                        raise response from None
                    return response
            return await super().read_response(disable_decoding, timeout, disconnect_on_error=disconnect_on_error,
                                               push_request=push_request)

        async def can_read_destructive(self) -> bool:
            # The pool asks this of every connection it hands out: redis-py reads under a zero timeout,
            # which fires (a timer, a cancel, an exception) whenever nothing is buffered, i.e. nearly always.
            # Nothing buffered, no end of stream, no error: that answer is known without the read.
            parser = self._parser
            reader, stream = getattr(parser, "_reader", None), getattr(parser, "_stream", None)
            if (isinstance(parser, _AsyncHiredisParser) and parser._connected and reader is not None
                    and stream is not None and not getattr(stream, "_buffer", True)
                    and not stream.at_eof() and stream.exception() is None):
                return reader.gets() is not NOT_ENOUGH_DATA  # a reply left unread: the pool drops it
            return await super().can_read_destructive()

        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            if not self.socket_timeout or not self.is_connected:
                return await super().send_packed_command(command, check_health)
            if check_health:
                await self.check_health()
            writer = self._writer
            try:
                if isinstance(command, str):
                    command = command.encode()
                if isinstance(command, bytes):
                    command = [command]
                writer.writelines(command)
                if writer.transport.get_write_buffer_size():  # the kernel did not take it all: may wait
                    await asyncio.wait_for(writer.drain(), self.socket_timeout)
                else:  # nothing buffered, so not paused: returns at once (raises if the link is lost)
                    await writer.drain()
            except TimeoutError:
                await self.disconnect(nowait=True)
                raise RedisTimeoutError("Timeout writing to socket") from None
            except OSError as e:
                await self.disconnect(nowait=True)
                err_no, errmsg = ("UNKNOWN", e.args[0]) if len(e.args) == 1 else (e.args[0], e.args[1])
                raise RedisConnectionError(f"Error {err_no} while writing to socket. {errmsg}.") from e
            except BaseException:
                await self.disconnect(nowait=True)
                raise

    return _UntimedFastPath


@functools.cache
def _retrying_pool_class() -> type:
    import redis.asyncio as aioredis

    class RetryingConnectionPool(_RetriedConnecting, aioredis.ConnectionPool):
        pass

    return RetryingConnectionPool


@functools.cache
def _retrying_sentinel_pool_class() -> type:
    from redis.asyncio.sentinel import SentinelConnectionPool

    class RetryingSentinelPool(_RetriedConnecting, SentinelConnectionPool):
        """Also closes the connections to the Sentinels when the pool is closed for good."""

        async def disconnect(self, inuse_connections: bool = True) -> None:
            await super().disconnect(inuse_connections)
            if inuse_connections:  # a full close (a master change only drops idle connections)
                for client in self.sentinel_manager.sentinels:
                    await client.aclose()

    return RetryingSentinelPool


def client_pool(url: str, timeout: float, *, retries: int = 8) -> Any:
    """A pool with timeouts (nothing hangs) that reconnects across a short outage, such as a
    restart of the embedded server or a Sentinel failover, instead of failing the call."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    tls_options(url)  # a missing certificate file says so now
    return retrying_pool(  # a pool that also retries taking (reconnecting) a connection
        url, socket_connect_timeout=timeout, socket_timeout=max(30.0, timeout), health_check_interval=30,
        retry=redis_retry(retries),  # also retries a refused reconnect; retries do not nest
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


def async_client(url: str, timeout: float, *, retries: int = 8) -> Any:
    """A ``redis.asyncio.Redis`` on :func:`client_pool` (close it with ``aclose()``)."""
    import redis.asyncio as aioredis

    return aioredis.Redis(connection_pool=client_pool(url, timeout, retries=retries))


def sync_client(url: str, **kwargs: Any) -> Any:
    """A blocking ``redis.Redis`` for ``url`` (either kind); ``kwargs`` are redis-py's (timeouts)."""
    import redis

    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **kwargs)
    from redis.sentinel import Sentinel

    target = SentinelURL.parse(url)
    timeout = kwargs.get("socket_connect_timeout") or 2.0
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=target.sentinel_kwargs(timeout))
    client = sentinel.master_for(target.master, **{**target.data_kwargs(), **kwargs})
    close = client.close

    def close_all() -> None:  # the Sentinels' connections too
        close()
        for s in sentinel.sentinels:
            s.close()

    client.close = close_all
    return client


def redis_settings_for(settings: Settings, url: str) -> Any:
    """arq ``RedisSettings`` for the queue db, with timeouts so nothing hangs and retries on blips
    (what ``arq --check`` uses; the worker itself runs on a :func:`client_pool`)."""
    from arq.connections import RedisSettings
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if is_sentinel_url(url):
        target = SentinelURL.parse(with_db(url, settings.queue_db))
        rs = RedisSettings(host=list(target.sentinels), sentinel=True, sentinel_master=target.master,
                           database=target.db or 0, username=target.username, password=target.password,
                           ssl=target.ssl)
        for name, value in target._tls_kwargs().items():
            setattr(rs, name, value)
    else:
        rs = RedisSettings.from_dsn(with_db(url, settings.queue_db))
        for name, value in tls_options(url).items():  # arq's from_dsn reads the scheme, not the certificates
            setattr(rs, name, value)
    rs.conn_timeout = int(max(1, settings.connect_timeout))
    rs.conn_retries = 5
    rs.conn_retry_delay = 1
    rs.retry_on_timeout = True
    rs.retry_on_error = [RedisConnectionError, RedisTimeoutError, ConnectionResetError]
    rs.retry = worker_retry()
    return rs


#: about 11 s of retries (see :func:`redis_retry`)
WORKER_RETRIES = 14


def worker_retry() -> Any:
    """Retry a failed Redis call for about 11 s (see :func:`redis_retry`): long enough to ride out a
    restart of the server or a failover; a refused reconnect would otherwise end arq's main loop."""
    return redis_retry(WORKER_RETRIES)
