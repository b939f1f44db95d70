"""Redis connections shared by workers and producers: one serializer (JSON, never pickle)."""

from __future__ import annotations

import json
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool

from worker.contract import QUEUE_NAME


def serialize(obj: Any) -> bytes:
    # JSON instead of arq's default pickle: whoever can write to Redis must not get code execution.
    return json.dumps(obj, default=str, separators=(",", ":")).encode()


def deserialize(data: bytes) -> Any:
    return json.loads(data)


def redis_settings(url: str) -> RedisSettings:
    rs = RedisSettings.from_dsn(url)
    # Ride out a Redis restart instead of dying: arq retries the initial connection this often.
    rs.conn_retries = 30
    rs.conn_retry_delay = 1
    rs.retry_on_timeout = True
    return rs


async def connect(url: str) -> ArqRedis:
    return await create_pool(
        redis_settings(url),
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=QUEUE_NAME,
    )
