"""Has a batch ended? Every job it counts is final (the batch hash counts its jobs per state)."""

from __future__ import annotations

from redis.asyncio import Redis

from worker.contract import FINAL_STATES
from worker.keys import Keys

_FINAL = sorted(FINAL_STATES)


async def batch_end(redis: Redis, batch: str) -> int | None:
    """When the batch ended (its last transition, Redis ms: one value per end, so a batch that
    runs again and ends again ends anew), or None while a job of it is not final."""
    total, updated, *counts = await redis.hmget(  # type: ignore[misc]  # redis-py's async stubs
        Keys.batch(batch), ["total", "updated_at", *_FINAL]
    )
    if not total or sum(int(c or 0) for c in counts) < int(total):
        return None
    return int(updated or 0)
