"""Redis connections shared by workers and producers: one serializer (JSON, never pickle)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog
from arq.connections import ArqRedis, create_pool
from arq.connections import RedisSettings as ArqRedisSettings
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.keys import QUEUE_NAME
from worker.settings import RedisSettings

T = TypeVar("T")
_log = structlog.get_logger("worker.redis")


def serialize(obj: Any) -> bytes:
    # JSON instead of arq's default pickle: whoever can write to Redis must not get code execution.
    return json.dumps(obj, default=str, separators=(",", ":")).encode()


def deserialize(data: bytes) -> Any:
    return json.loads(data)


def redis_settings(
    url: str, sentinels: Sequence[str] | None = None, master: str = ""
) -> ArqRedisSettings:
    """arq settings from a URL (`redis://`, or `rediss://` for TLS), or via Redis Sentinel.

    With `sentinels` (["host:port", ...]) the URL supplies only the database and password and
    the primary named `master` is discovered through Sentinel (Redis Cluster is not supported:
    arq and our Lua scripts use multi-key operations on one primary).
    """
    rs = ArqRedisSettings.from_dsn(url)
    if sentinels:
        rs.host = [(h, int(p)) for h, _, p in (s.rpartition(":") for s in sentinels)]
        rs.sentinel = True
        rs.sentinel_master = master or "mymaster"
    # Ride out a Redis restart instead of dying: arq retries the initial connection this often.
    rs.conn_retries = 30
    rs.conn_retry_delay = 1
    rs.retry_on_timeout = True
    return rs


# Commands (CLI, webhook, dashboard start-up) fail fast instead of riding out an outage.
FAIL_FAST_CONNECT_S = 2.0


class RedisUnavailable(Exception):
    """Redis did not answer (or refused our credentials) when connecting with `fail_fast`."""

    def __init__(self, where: str, reason: str, *, auth: bool = False) -> None:
        super().__init__(f"cannot reach Redis at {where}: {reason}")
        self.where, self.reason, self.auth = where, reason, auth


def where(target: str | RedisSettings) -> str:
    """Where Redis is, for messages: never the password."""
    if isinstance(target, RedisSettings):
        if target.sentinels:
            sentinels = ",".join(target.sentinels)
            return f"Sentinel {sentinels} (master {target.sentinel_master})"
        target = target.url
    u = urlsplit(target)
    return u._replace(netloc=u.netloc.rpartition("@")[2]).geturl() if "@" in u.netloc else target


def settings_for(s: RedisSettings) -> ArqRedisSettings:
    return redis_settings(s.url, s.sentinels, s.sentinel_master)


async def connect(target: str | RedisSettings, *, fail_fast: bool = False) -> ArqRedis:
    """A connection pool (pinged). By default the first connection is retried for ~30 s (a
    worker rides out a Redis restart); `fail_fast` tries once, for a few seconds, and raises
    `RedisUnavailable` (for commands a person is waiting on)."""
    rs = settings_for(target) if isinstance(target, RedisSettings) else redis_settings(target)
    if fail_fast:
        rs.conn_retries = 0
        rs.conn_timeout = FAIL_FAST_CONNECT_S  # type: ignore[assignment]  # a float works
    pool = create_pool(
        rs,
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=QUEUE_NAME,
    )
    if not fail_fast:
        return await pool
    here = where(target)
    try:
        return await asyncio.wait_for(pool, FAIL_FAST_CONNECT_S + 1)
    except AuthenticationError as e:
        raise RedisUnavailable(here, f"authentication failed ({e})", auth=True) from e
    except TimeoutError as e:
        raise RedisUnavailable(here, f"no answer within {FAIL_FAST_CONNECT_S + 1:.0f} s") from e
    except (RedisError, OSError) as e:
        raise RedisUnavailable(here, reason(e)) from e


def reason(e: BaseException) -> str:
    """`Connection refused` rather than `Error 111 connecting to 127.0.0.1:1. Connect call…`."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and (seen.errno or seen.strerror):
            # asyncio's strerror is "Connect call failed (...)": the errno says it better.
            errno = seen.errno or 0
            return os.strerror(errno) if errno > 0 else str(seen.strerror)
        seen = seen.__cause__ or seen.__context__
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text


REDIS_DOWN: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError)


async def patiently(
    call: Callable[[], Awaitable[T]], *, what: str, patience_s: float | None = 300.0
) -> T:
    """Run a Redis call, riding out an outage (restart, failover) with backoff.

    `patience_s=None` waits for as long as the process lives: used for what must not be lost
    (a paid answer that reached this worker).
    """
    delay, waited = 0.2, 0.0
    while True:
        try:
            return await call()
        except REDIS_DOWN as e:
            if patience_s is not None and waited >= patience_s:
                raise
            _log.warning("redis unavailable; retrying", what=what, error=type(e).__name__)
            await asyncio.sleep(delay)
            waited += delay
            delay = min(5.0, delay * 2)
