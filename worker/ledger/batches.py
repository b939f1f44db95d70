"""Operating on a whole batch: cancel its open jobs, find its final jobs in a state, set its
operator fields (`batch_set.lua`: its callback, its cancel mark).

A batch's jobs are indexed twice, each index bounded by the batch, never the backlog: the open
set (`Keys.batch_open`: not yet final) and the done list (`Keys.batch_done`: final, in the
order they ended, until the batch's report retires them).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field

from redis.asyncio import Redis

from worker.keys import PREFIX, Keys
from worker.ledger.reads import text
from worker.ledger.records import CancelOutcome
from worker.ledger.transitions import Ledger
from worker.lua import register

PAGE = 1000


@dataclass
class CancelSummary:
    """What `upscale cancel` did: per outcome, how many jobs."""

    batch: str | None = None
    counts: dict[CancelOutcome, int] = field(default_factory=dict)

    def add(self, outcomes: Collection[CancelOutcome]) -> None:
        for o in outcomes:
            self.counts[o] = self.counts.get(o, 0) + 1

    @property
    def cancelled(self) -> int:
        return self.counts.get("cancelled", 0)

    @property
    def after_call(self) -> int:
        """Marked: they store the output already paid for, then end `cancelled`."""
        return self.counts.get("after_call", 0)


async def cancel_batch(
    redis: Redis, ledger: Ledger, batch: str, on_page: Callable[[CancelSummary], None] | None = None
) -> CancelSummary:
    """Cancel every open job of `batch`, and refuse new ones into it (a backfill still
    listing stops at its next page). Jobs holding money end after storing it."""
    await set_batch_fields(redis, batch, cancelled_at=str(int(time.time() * 1000)))
    summary = CancelSummary(batch=batch)
    cursor = 0
    while True:
        cursor, ids = await redis.sscan(Keys.batch_open(batch), cursor, count=PAGE)
        if ids:
            summary.add(await ledger.cancel([text(i) for i in ids]))
            if on_page:
                on_page(summary)
        if cursor == 0:
            return summary


async def reopen_batch(redis: Redis, batch: str) -> None:
    """Lift a batch's cancel: new jobs may join it again."""
    await set_batch_fields(redis, batch, cancelled_at="")


async def set_batch_callback(redis: Redis, batch: str, url: str) -> None:
    """POST one notice (counts, spend) to `url` when every job of `batch` is final."""
    await set_batch_fields(redis, batch, callback_url=url)


async def set_batch_fields(redis: Redis, batch: str, **fields: str) -> None:
    """Set a batch's operator fields ('' deletes one): `callback_url`, `cancelled_at`."""
    await register(redis, "batch_set")(keys=[Keys.batch(batch)], args=[PREFIX, json.dumps(fields)])


async def final_jobs(redis: Redis, batch: str, states: Collection[str]) -> AsyncIterator[list[str]]:
    """The batch's final jobs whose state is one of `states`, a page at a time (from its done
    list: jobs whose records expired with the report's retention are not found)."""
    start = 0
    while True:
        ids = [text(i) for i in await redis.lrange(Keys.batch_done(batch), start, start + PAGE - 1)]  # type: ignore[misc]
        if not ids:
            return
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(Keys.job(job_id), "state")
            found = await pipe.execute()
        page = [j for j, s in zip(ids, found, strict=True) if s is not None and text(s) in states]
        if page:
            yield page
        start += PAGE
