"""Redis connections shared by workers and producers: one serializer (JSON, never pickle)."""

from __future__ import annotations

import json
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool

from worker.contract import QUEUE_NAME
from worker.settings import Settings


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
