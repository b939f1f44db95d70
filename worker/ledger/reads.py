"""Reading the ledger: job records, batch and fleet summaries, spend, per-minute series."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis

from worker.contract import JobState, micros_to_usd
from worker.keys import QUEUES, Keys
from worker.ledger.records import JobRecord

T = TypeVar("T")


def text(v: Any) -> str:
    """A Redis reply as text (replies are bytes unless the client decodes them)."""
    return v.decode() if isinstance(v, bytes) else str(v)


class LedgerReads:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def get(self, job_id: str) -> JobRecord | None:
        h = await self.redis.hgetall(Keys.job(job_id))  # type: ignore[misc]  # redis-py's async stubs
        if not h:
            return None
        return JobRecord.from_hash(job_id, {text(k): text(v) for k, v in h.items()})

    async def get_many(self, job_ids: list[str]) -> list[JobRecord]:
        """Records of many jobs in one round trip (those that exist, in order)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(Keys.job(job_id))
            hashes = await pipe.execute()
        return [
            JobRecord.from_hash(j, {text(k): text(v) for k, v in h.items()})
            for j, h in zip(job_ids, hashes, strict=True)
            if h
        ]

    async def _wait_on(
        self, channel: str, look: Callable[[], Awaitable[T | None]], timeout: float | None
    ) -> T:
        """Until `look()` finds something: subscribe first, then look, so no event slips
        between the two; look again on each event, and every few seconds in case Redis
        restarted (a lost event)."""
        async with self.redis.pubsub() as ps:
            await ps.subscribe(channel)
            async with asyncio.timeout(timeout):
                while True:
                    found = await look()
                    if found is not None:
                        return found
                    await ps.get_message(ignore_subscribe_messages=True, timeout=5.0)

    async def wait_final(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Wait for a job to reach a final state. Raises TimeoutError, KeyError for an unknown
        job."""

        async def look() -> JobRecord | None:
            rec = await self.get(job_id)
            if rec is None:
                raise KeyError(f"no such job: {job_id}")
            return rec if rec.final else None

        return await self._wait_on(Keys.final_channel(job_id), look, timeout)

    async def wait_batch_final(self, batch: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait for a batch where every job is final (woken by the ledger's batch events)."""

        async def look() -> dict[str, Any] | None:
            summary = await self.batch_summary(batch)
            final = sum(n for s, n in summary["states"].items() if JobState(s).final)
            return summary if summary["total"] and final >= summary["total"] else None

        return await self._wait_on(Keys.batch_final_channel(batch), look, timeout)

    async def batch_summary(self, batch: str) -> dict[str, Any]:
        h = await self.redis.hgetall(Keys.batch(batch))  # type: ignore[misc]  # redis-py's async stubs
        states = {s.value for s in JobState}
        counts = {text(k): int(v) for k, v in h.items() if text(k) in states and int(v)}
        data = {text(k): text(v) for k, v in h.items()}
        return {
            "batch": batch,
            "total": int(data.get("total", 0)),
            "states": counts,
            "spend_usd": micros_to_usd(int(data.get("spend_micros", 0))),
        }

    async def state_counts(self) -> dict[str, int]:
        h = await self.redis.hgetall(Keys.states)  # type: ignore[misc]  # redis-py's async stubs
        return {text(k): int(v) for k, v in h.items() if int(v)}

    async def spend(self, day: str | None = None) -> dict[str, Any]:
        day = day or time.strftime("%Y-%m-%d", time.gmtime())
        total, today = await self.redis.mget(Keys.spend_total, Keys.spend_day(day))
        return {
            "total_usd": micros_to_usd(int(total or 0)),
            "today_usd": micros_to_usd(int(today or 0)),
            "day": day,
        }

    async def finished_per_minute(self, minutes: int = 60) -> list[int]:
        """Jobs that reached a final state in each of the last `minutes` minutes (oldest first)."""
        now_min = int(time.time() // 60)
        keys = [Keys.finished_minute(m) for m in range(now_min - minutes + 1, now_min + 1)]
        return [int(v or 0) for v in await self.redis.mget(keys)]

    async def sample_depth(self, minute: int) -> None:
        """Record the queue depth once per minute (first worker to get there wins)."""
        depth = sum([int(await self.redis.zcard(q)) for q in QUEUES.values()])
        await self.redis.set(Keys.depth_minute(minute), depth, nx=True, ex=7200)

    async def depth_per_minute(self, minutes: int = 60) -> list[int | None]:
        now_min = int(time.time() // 60)
        keys = [Keys.depth_minute(m) for m in range(now_min - minutes + 1, now_min + 1)]
        return [int(v) if v is not None else None for v in await self.redis.mget(keys)]

    async def recent_batches(self, limit: int = 20) -> list[dict[str, Any]]:
        names = await self.redis.zrevrange(Keys.batches, 0, limit - 1)
        return [await self.batch_summary(text(n)) for n in names]

    async def recent_failures(self, limit: int = 20) -> list[JobRecord]:
        ids = await self.redis.zrevrange(Keys.failures, 0, limit - 1)
        records = [await self.get(text(i)) for i in ids]
        return [r for r in records if r is not None]
