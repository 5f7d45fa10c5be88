"""Connections to Redis, made one way everywhere: URLs with a database, timeouts so nothing hangs,
and retries that ride out a restart of the server.

* :func:`with_db`, :func:`ping`, :func:`tls_options`;
* :func:`redis_retry` and :func:`retrying_pool`: the retry policy and a pool whose connecting is retried too;
* :func:`client_pool`: the pool of a notebook's client; :func:`redis_settings_for`: arq's
  ``RedisSettings`` for a worker.

TLS: a ``rediss://`` URL, with redis-py's query parameters for the certificates, the same for the
notebook, the workers, the CLI and the dashboard::

    rediss://:PASSWORD@10.0.0.2:6380/?ssl_ca_certs=/etc/mediaq/ca.pem
    rediss://:PASSWORD@redis.lan:6380/?ssl_ca_certs=ca.pem&ssl_certfile=client.pem&ssl_keyfile=client.key

``ssl_cert_reqs`` (``required``, the default, or ``none``) and ``ssl_check_hostname`` (``true``/``false``)
are read too.
"""

from __future__ import annotations

import contextvars
import functools
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mediaq.errors import ConfigError, RedisUnavailable
from mediaq.runtime.settings import Settings, redact_url

__all__ = ["client_pool", "ping", "redis_retry", "redis_settings_for", "retrying_pool", "tls_options", "with_db",
           "worker_retry"]

#: TLS parameters of a ``rediss://`` URL's query, as redis-py and arq's ``RedisSettings`` name them
TLS_PARAMETERS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")


def with_db(url: str, db: int, *, keep_explicit: bool = True) -> str:
    """``url`` on database ``db``; a db the URL names itself (``redis://host/3``) wins if ``keep_explicit``."""
    parts = urlsplit(url)
    if keep_explicit and parts.path.strip("/"):
        return url
    return parts._replace(path=f"/{db}").geturl()


def tls_options(url: str) -> dict[str, Any]:
    """The TLS settings of ``url`` (empty for ``redis://``); a certificate file that is not there is a
    :class:`~mediaq.errors.ConfigError` now rather than a handshake failure later.

    >>> tls_options("rediss://:pw@h:6380/1?ssl_ca_certs=/dev/null&ssl_check_hostname=true")
    {'ssl': True, 'ssl_ca_certs': '/dev/null', 'ssl_check_hostname': True}
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return {}
    out: dict[str, Any] = {"ssl": True}
    for name, values in parse_qs(parts.query).items():
        if name not in TLS_PARAMETERS:
            continue
        value: Any = values[-1]
        if name == "ssl_check_hostname":
            value = value.lower() in ("1", "true", "yes")
        elif name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile") and not Path(value).is_file():
            raise ConfigError(f"{name}={value!r} in the Redis URL is not a file (give the path of the PEM file "
                              "on this machine)")
        out[name] = value
    return out


def ping(url: str, timeout: float = 2.0) -> None:
    """PING ``url`` synchronously; :class:`RedisUnavailable` with a clear reason if it fails."""
    import redis

    tls_options(url)  # a missing certificate file says so
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise RedisUnavailable(f"Redis at {redact_url(url)} rejected the password ({exc}); check MEDIAQ_REDIS_URL "
                               "or, for the embedded server, its state folder") from None
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
                return await super().call_with_retry(do, fail)
            finally:
                _IN_RETRY.reset(token)

    return OutermostRetry


def retrying_pool(url: str, **kwargs: Any) -> Any:
    """A ``redis.asyncio.ConnectionPool`` for ``url`` whose *connecting* is retried too.

    redis-py retries a command (with the pool's ``retry``), but takes the connection for it from the
    pool first, outside that retry: a pooled connection that must reconnect, and whose handshake
    (``AUTH``) meets a server that is just restarting, fails the call at once. Here getting a
    connection is retried with the same policy (pass ``retry=redis_retry(...)``).

    >>> pool = retrying_pool("redis://127.0.0.1:1/0", retry=redis_retry(2))
    >>> type(pool).__name__
    'RetryingConnectionPool'
    """
    return _retrying_pool_class().from_url(url, **kwargs)


@functools.cache
def _retrying_pool_class() -> type:
    import redis.asyncio as aioredis

    class RetryingConnectionPool(aioredis.ConnectionPool):
        async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            retry = self.connection_kwargs.get("retry")
            get = super().get_connection
            if retry is None:
                return await get(*args, **kwargs)

            async def no_cleanup(error: Exception) -> None:  # get_connection released it already
                return None

            return await retry.call_with_retry(lambda: get(*args, **kwargs), no_cleanup)

    return RetryingConnectionPool


def client_pool(url: str, timeout: float) -> Any:
    """A pool with timeouts (nothing hangs) that reconnects across a short outage, such as a
    restart of the embedded server, instead of failing the call."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    tls_options(url)  # a missing certificate file says so now
    return retrying_pool(  # a ConnectionPool that also retries taking (reconnecting) a connection
        url, socket_connect_timeout=timeout, socket_timeout=max(30.0, timeout), health_check_interval=30,
        retry=redis_retry(8),  # also retries a refused reconnect; retries do not nest
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


def redis_settings_for(settings: Settings, url: str) -> Any:
    """arq ``RedisSettings`` for the queue db, with timeouts so nothing hangs and retries on blips."""
    from arq.connections import RedisSettings
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

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


def worker_retry() -> Any:
    """Retry a failed Redis call for about 11 s (see :func:`mediaq.runtime.server.redis_retry`): long enough
    to ride out a restart of the server; a refused reconnect would otherwise end arq's main loop."""
    return redis_retry(14)
