"""Redis connections shared by workers and producers: one serializer (JSON, never pickle), and
what counts as Redis being away (`REDIS_DOWN`: waited out, never a failure)."""

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
from redis._parsers.base import BaseParser
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
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


class Refused(ResponseError):
    """A refusal redis-py has no class of its own for (see `REFUSALS`)."""


class NoReplicas(Refused):
    """NOREPLICAS: fewer good replicas than `min-replicas-to-write`."""


class PersistenceFailing(Refused):
    """MISCONF: the last RDB save or AOF write failed, so writes are refused."""


class ScriptBusy(Refused):
    """BUSY: a script runs past `busy-reply-threshold`."""


# Redis answering but refusing commands for a while: full at `maxmemory` with noeviction, a
# replica or a demoted primary, loading its dataset, a replica without its primary, ... Each
# passes (a failover, a restart, an operator freeing memory): wait, exactly as for a lost
# connection. Error code (the reply's first word) -> class.
REFUSALS: dict[str, type[RedisError]] = {
    "OOM": OutOfMemoryError,
    "READONLY": ReadOnlyError,
    "LOADING": BusyLoadingError,
    "MASTERDOWN": MasterDownError,
    "TRYAGAIN": TryAgainError,
    "CLUSTERDOWN": ClusterDownError,
    "NOREPLICAS": NoReplicas,
    "MISCONF": PersistenceFailing,
    "BUSY": ScriptBusy,
}
# redis-py types OOM, READONLY and LOADING on every connection, the others only on a cluster's:
# teach its error table the rest (every parser reads this one dict), so a plain connection
# raises them typed too and `except REDIS_DOWN` catches them.
for _code, _cls in REFUSALS.items():
    BaseParser.EXCEPTION_CLASSES.setdefault(_code, _cls)

REDIS_DOWN: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    *dict.fromkeys(REFUSALS.values()),
)

_KIND = {cls: code.lower() for code, cls in REFUSALS.items()}


def away_kind(e: BaseException) -> str:
    """How Redis is away, for logs and metrics: `oom`, `readonly`, `loading`, ... (a refusal),
    else `connection` or `timeout`."""
    for cls in type(e).__mro__:
        if cls in _KIND:
            return _KIND[cls]
    return "timeout" if isinstance(e, RedisTimeoutError) else "connection"


def refusal(e: BaseException) -> bool:
    """Redis answered but refused (as against: did not answer)."""
    return away_kind(e) not in ("connection", "timeout")


# Told of every command that found Redis away (the worker's metrics count them by kind).
_watchers: list[Callable[[str], None]] = []
_alerted = False  # an outage was logged as an error since a command last succeeded
_last_kind = ""  # how Redis was last found away


def watch_away(callback: Callable[[str], None]) -> None:
    _watchers.append(callback)


def note_away(e: BaseException, what: str) -> str:
    """Count a command that found Redis away; the first refusal of an outage is logged as an
    error (alert on it: writes wait, paid answers are held in memory until it passes)."""
    global _alerted, _last_kind
    kind = _last_kind = away_kind(e)
    for watcher in _watchers:
        watcher(kind)
    if refusal(e) and not _alerted:
        _alerted = True
        _log.error(
            "redis refuses commands; waiting, nothing is dropped",
            kind=kind,
            what=what,
            detail=str(e).splitlines()[0][:200] if str(e) else "",
        )
    return kind


def last_away() -> str:
    """How Redis was last found away by this process ("" = never)."""
    return _last_kind


def note_back() -> None:
    """A command succeeded after Redis was away: the next refusal is a new outage."""
    global _alerted
    if _alerted:
        _alerted = False
        _log.info("redis accepts commands again")


async def patiently(
    call: Callable[[], Awaitable[T]], *, what: str, patience_s: float | None = 300.0
) -> T:
    """Run a Redis call, riding out an outage (restart, failover, a full or read-only Redis)
    with backoff.

    `patience_s=None` waits for as long as the process lives: used for what must not be lost
    (a paid answer that reached this worker).
    """
    delay, waited = 0.2, 0.0
    while True:
        try:
            result = await call()
        except REDIS_DOWN as e:
            if patience_s is not None and waited >= patience_s:
                raise
            kind = note_away(e, what)
            _log.warning(
                "redis unavailable; retrying", what=what, error=type(e).__name__, kind=kind
            )
            await asyncio.sleep(delay)
            waited += delay
            delay = min(5.0, delay * 2)
        else:
            if waited:
                note_back()
            return result
