"""After a batch's full report is written its records expire (`UPSCALE_LEDGER_RETENTION`),
page by page of its done list (`expire_reported.lua`), then the done list itself. Records that
hold money keep no TTL: the script decides, atomically per page."""

from __future__ import annotations

import functools
from typing import Any

from redis.asyncio import Redis

from worker.keys import PREFIX, Keys
from worker.lua import register
from worker.redis_conn import patiently


class Retention:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._script = register(redis, "expire_reported")

    async def start(self, batch: str, *, upto: int, retention_ms: int, page: int = 1000) -> int:
        """Expire the records of the done list's first `upto` ids (those the report holds);
        returns how many were given a TTL."""
        done = Keys.batch_done(batch)
        expired = 0
        for start in range(0, upto, page):
            args = [PREFIX, start, min(upto, start + page) - 1, retention_ms]
            n = await patiently(functools.partial(self._page, done, args), what="expire_reported")
            expired += int(n)
        await patiently(lambda: self.redis.pexpire(done, retention_ms), what="expire done list")
        return expired

    async def _page(self, done: str, args: list[Any]) -> Any:
        return await self._script(keys=[done], args=args)
