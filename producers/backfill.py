"""Bulk backfill: list a bucket prefix and feed matching objects into the `bulk` lane.

Constant memory for millions of keys (one listing page at a time), back-pressure on the queue
depth (a queued job waits minutes, not days), and a checkpoint in Redis so a re-run continues
after the last enqueued key. Re-listing is safe anyway: job ids are deterministic, so anything
already queued or done is a duplicate, not a second payment.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from redis.asyncio import Redis

from producers.api import build_spec
from worker.api import (
    QUEUES,
    JobSpec,
    JobStore,
    Keys,
    S3Object,
    Settings,
    render_destination,
    usd_to_micros,
)


@dataclass
class Filters:
    include: list[str] = field(default_factory=list)  # globs on the key or its basename
    exclude: list[str] = field(default_factory=list)
    min_size: int = 1
    max_size: int | None = None
    since: datetime | None = None
    until: datetime | None = None

    def match(self, key: str, size: int, modified: datetime) -> str | None:
        """None when the object qualifies, else the reason it is skipped."""
        base = key.rsplit("/", 1)[-1]
        if self.include and not any(_glob(key, base, g) for g in self.include):
            return "filtered"
        if any(_glob(key, base, g) for g in self.exclude):
            return "filtered"
        if size < self.min_size or (self.max_size is not None and size > self.max_size):
            return "size"
        if (self.since and modified < self.since) or (self.until and modified >= self.until):
            return "modified"
        return None


def _glob(key: str, base: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(key, pattern) or fnmatch.fnmatchcase(base, pattern)


@dataclass
class BackfillStats:
    listed: int = 0
    matched: int = 0
    enqueued: int = 0
    duplicates: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    last_key: str = ""
    resumed_from: str = ""
    budget_stop: bool = False
    started: float = field(default_factory=time.monotonic)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass
class BackfillPlan:
    source: str  # s3://bucket/prefix
    batch: str
    dest: str | None = None
    filters: Filters = field(default_factory=Filters)
    params: dict[str, Any] = field(default_factory=dict)
    budget_usd: float | None = None
    dry_run: bool = False
    max_queue: int | None = None  # back-pressure threshold (jobs queued, all lanes)
    chunk: int = 500
    restart: bool = False  # ignore the checkpoint


def checkpoint_key(batch: str) -> str:
    return Keys.backfill(batch)


class Backfill:
    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        s3: Any,
        plan: BackfillPlan,
        on_progress: Callable[[BackfillStats], None] | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.s3 = s3
        self.plan = plan
        self.ledger = JobStore(redis)
        self.on_progress = on_progress or (lambda _s: None)
        src = S3Object.parse(plan.source) if plan.source.count("/") > 2 else None
        self.bucket = src.bucket if src else plan.source[5:].rstrip("/")
        self.prefix = src.key if src else ""
        # Recursion guard: never list our own outputs when they land in the same bucket.
        self.guard_prefix = self._destination_prefix()

    def _destination_prefix(self) -> str | None:
        template = self.plan.dest or self.settings.jobs.dest_template
        probe = render_destination(template, S3Object(bucket=self.bucket, key="probe.png"))
        if probe.bucket != self.bucket:
            return None
        static = template.split("{", 1)[0]
        return (
            static[len(f"s3://{self.bucket}/") :]
            if static.startswith(f"s3://{self.bucket}/")
            else None
        )

    async def run(self) -> BackfillStats:
        stats = BackfillStats()
        ck = checkpoint_key(self.plan.batch)
        start_after = ""
        if not self.plan.restart and not self.plan.dry_run:
            saved = await self.redis.hget(ck, "last_key")  # type: ignore[misc]  # redis-py stubs
            if saved:
                start_after = saved.decode() if isinstance(saved, bytes) else str(saved)
                stats.resumed_from = start_after
        budget_micros = (
            usd_to_micros(self.plan.budget_usd) if self.plan.budget_usd is not None else None
        )
        if budget_micros is not None and not self.plan.dry_run:
            # The workers' admission honours this cap too: never spend past it, even if re-run.
            await self.redis.hset(  # type: ignore[misc]
                Keys.batch(self.plan.batch), "budget_micros", str(budget_micros)
            )
        price = usd_to_micros(self.settings.upstream.price_usd)
        pending: list[JobSpec] = []
        async for obj in self._list(start_after):
            stats.listed += 1
            key, size = obj["Key"], int(obj.get("Size", 0))
            reason = self._skip_reason(key, size, obj["LastModified"])
            if reason:
                stats.skip(reason)
            else:
                if budget_micros is not None and (stats.matched + 1) * price > budget_micros:
                    stats.budget_stop = True
                    break
                stats.matched += 1
                stats.bytes += size
                if not self.plan.dry_run:
                    pending.append(
                        build_spec(
                            S3Object(
                                bucket=self.bucket, key=key, etag=str(obj.get("ETag", "")) or None
                            ),
                            dest=self.plan.dest,
                            batch=self.plan.batch,
                            lane="bulk",
                            settings=self.settings,
                            **self.plan.params,
                        )
                    )
            stats.last_key = key
            if len(pending) >= self.plan.chunk:
                await self._flush(pending, stats, ck)
            if stats.listed % 1000 == 0:
                self.on_progress(stats)
        if pending:
            await self._flush(pending, stats, ck)
        if not self.plan.dry_run:
            await self.redis.hset(  # type: ignore[misc]
                ck,
                mapping={
                    "last_key": stats.last_key,
                    "done": int(not stats.budget_stop),
                    "finished_at": int(time.time()),
                },
            )
        self.on_progress(stats)
        return stats

    def _skip_reason(self, key: str, size: int, modified: datetime) -> str | None:
        if self.guard_prefix is not None and key.startswith(self.guard_prefix):
            return "own output"
        if key.endswith("/"):
            return "directory marker"
        return self.plan.filters.match(key, size, modified)

    async def _flush(self, pending: list[JobSpec], stats: BackfillStats, ck: str) -> None:
        await self._wait_for_room(len(pending))
        results = await self.ledger.enqueue(pending)
        for r in results:
            if r.outcome == "duplicate":
                stats.duplicates += 1
            else:
                stats.enqueued += 1
        # Checkpoint only after the jobs are safely in Redis: a crash re-lists, dedup absorbs it.
        await self.redis.hset(  # type: ignore[misc]
            ck,
            mapping={
                "last_key": stats.last_key,
                "listed": stats.listed,
                "enqueued": stats.enqueued,
                "source": self.plan.source,
                "updated_at": int(time.time()),
            },
        )
        pending.clear()
        self.on_progress(stats)

    async def _wait_for_room(self, n: int) -> None:
        limit = self.plan.max_queue or max(1000, (self.settings.flow.rpm_ceiling or 600) * 10)
        # Polling is right here: the queue drains at the upstream's pace (jobs/s), so a 1 s
        # look costs nothing and needs no event plumbing from every worker.
        while int(await self.redis.zcard(QUEUES["bulk"])) + n > limit:  # noqa: ASYNC110
            await asyncio.sleep(1.0)

    async def _list(self, start_after: str) -> AsyncIterator[dict[str, Any]]:
        """One page (1,000 keys) at a time, fetched in a thread: memory stays flat."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix, "MaxKeys": 1000}
            if token:
                kwargs["ContinuationToken"] = token
            elif start_after:
                kwargs["StartAfter"] = start_after
            page = await asyncio.to_thread(self.s3.list_objects_v2, **kwargs)
            for obj in page.get("Contents", []):
                yield obj
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")


def stats_dict(stats: BackfillStats) -> dict[str, Any]:
    d = asdict(stats)
    d.pop("started")
    d["elapsed_s"] = round(stats.elapsed, 2)
    return d
