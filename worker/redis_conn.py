"""Redis connections shared by workers and producers: one serializer (JSON, never pickle)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.keys import QUEUE_NAME
from worker.settings import Settings

T = TypeVar("T")
_log = structlog.get_logger("worker.redis")


def serialize(obj: Any) -> bytes:
    # JSON instead of arq's default pickle: whoever can write to Redis must not get code execution.
    return json.dumps(obj, default=str, separators=(",", ":")).encode()


def deserialize(data: bytes) -> Any:
    return json.loads(data)


def redis_settings(url: str, sentinels: list[str] | None = None, master: str = "") -> RedisSettings:
    """arq settings from a URL (`redis://`, or `rediss://` for TLS), or via Redis Sentinel.

    With `sentinels` (["host:port", ...]) the URL supplies only the database and password and
    the primary named `master` is discovered through Sentinel (Redis Cluster is not supported:
    arq and our Lua scripts use multi-key operations on one primary).
    """
    rs = RedisSettings.from_dsn(url)
    if sentinels:
        rs.host = [(h, int(p)) for h, _, p in (s.rpartition(":") for s in sentinels)]
        rs.sentinel = True
        rs.sentinel_master = master or "mymaster"
    # Ride out a Redis restart instead of dying: arq retries the initial connection this often.
    rs.conn_retries = 30
    rs.conn_retry_delay = 1
    rs.retry_on_timeout = True
    return rs


def settings_for(s: Settings) -> RedisSettings:
    return redis_settings(s.redis_url, s.redis_sentinels, s.redis_sentinel_master)


async def connect(target: str | Settings) -> ArqRedis:
    rs = settings_for(target) if isinstance(target, Settings) else redis_settings(target)
    return await create_pool(
        rs,
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=QUEUE_NAME,
    )


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
