"""Bulk backfill: feed the objects of a bucket prefix (listed) or of a manifest (an S3
Inventory report, a CSV list) into the `bulk` lane.

Pages come from `producers.listing` / `producers.manifest`, fetched ahead in threads, while this
loop filters, builds and enqueues; one enqueue (a pipelined chunk) is in flight while the next
chunk is built. Memory is constant for millions of keys (a few pages at a time), the queue
depth is bounded (back-pressure: a queued job waits minutes, not days), and a checkpoint in
Redis, written only after a chunk is in Redis, lets a re-run continue where it stopped.
Re-running is safe anyway: job ids are deterministic, so anything already queued or done is a
duplicate, not a second payment.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any

from redis.asyncio import Redis

from producers.backfill_plan import (
    BackfillPlan,
    BackfillStats,
    Dest,
    Filters,
    SpecMaker,
    checkpoint_key,
    split_source,
)
from producers.listing import ExistingOutputs, ObjectEntry, OrderedLister
from producers.manifest import ManifestError, ManifestReader, load_manifest
from worker.api import (
    QUEUES,
    JobsSettings,
    JobStore,
    Keys,
    NewJob,
    S3Object,
    Settings,
    render_destination,
    usd_to_micros,
)

__all__ = [
    "Backfill",
    "BackfillPlan",
    "BackfillStats",
    "Filters",
    "bulk_limit",
    "bulk_room",
    "checkpoint_key",
    "stats_dict",
]


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
        self.ledger = JobStore.for_settings(redis, settings)
        self.on_progress = on_progress or (lambda _s: None)
        self.bucket, self.prefix = ("", "") if plan.manifest else split_source(plan.source)
        self.maker = SpecMaker(settings, plan)
        # Recursion guard: never list our own outputs when they land in the same bucket.
        self.guard_prefix = self._destination_prefix() if self.bucket else None
        self._report_uri = settings.jobs.report_uri or ""  # read once: this runs per key
        self._flushing: asyncio.Task[None] | None = None
        # a chunk must fit the bulk lane's back-pressure limit, or it would wait for ever
        limit = plan.max_queue or bulk_limit(settings)
        self._chunk = max(1, min(plan.chunk, limit // 2))
        self._lister: OrderedLister | None = None

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

    def _in_reports(self, key: str) -> bool:
        return bool(self._report_uri) and f"s3://{self.bucket}/{key}".startswith(self._report_uri)

    def _existing_index(self) -> ExistingOutputs | None:
        """The destination is listable when every output of this prefix goes to one bucket."""
        if not self.plan.skip_existing or self.plan.manifest or self.maker.fixed_dest:
            return None
        dest_bucket, _ = self.maker.dest(ObjectEntry(self.bucket, (self.prefix or "") + "p.png"))
        return ExistingOutputs(self.s3, dest_bucket)

    async def run(self) -> BackfillStats:
        stats = BackfillStats()
        ck = checkpoint_key(self.plan.batch)
        cursor = resume_order = ""
        if not self.plan.restart and not self.plan.dry_run:
            saved = await self.redis.hmget(ck, ["last_key", "source", "order"])  # type: ignore[misc]  # redis-py stubs
            if saved[0] and (saved[1] is None or _text(saved[1]) == self.plan.source):
                cursor = stats.resumed_from = _text(saved[0])
                resume_order = _text(saved[2]) if saved[2] else "stream"  # older checkpoints
        budget_micros = (
            usd_to_micros(self.plan.budget_usd) if self.plan.budget_usd is not None else None
        )
        if budget_micros is not None and not self.plan.dry_run:
            # The workers' admission honours this cap too: never spend past it, even if re-run.
            await self.redis.hset(  # type: ignore[misc]
                Keys.batch(self.plan.batch), "budget_micros", str(budget_micros)
            )
        price = usd_to_micros(self.settings.upstream.price_usd)
        existing = self._existing_index()
        pending: list[NewJob] = []
        lister: OrderedLister | None = None
        if self.plan.manifest:
            manifest = await asyncio.to_thread(load_manifest, self.s3, self.plan.source)
            pages = ManifestReader(self.s3, manifest, cursor, versions=self.plan.versions).pages()
        else:
            lister = OrderedLister(
                self.s3,
                self.bucket,
                self.prefix,
                cursor,
                parallel=self.plan.parallel,
                resume_order=resume_order,
            )
            self._lister = lister
            pages = lister.pages()
        next_tick = 1000
        try:
            async for page in pages:
                stats.listed += len(page.entries) + sum(page.skipped.values())
                for reason, n in page.skipped.items():
                    stats.skip(reason, n)
                jobs = await self._candidates(page.entries, stats, existing)
                for entry, dst, listed in jobs:
                    if entry is None:
                        continue
                    if budget_micros is not None and (stats.matched + 1) * price > budget_micros:
                        stats.budget_stop = True
                        break
                    stats.matched += 1
                    stats.bytes += entry.size or 0
                    stats.last_key = entry.cursor
                    if self.plan.dry_run:
                        continue
                    pending.append(self.maker.job(entry, dst, listed))
                    stats.dest_listed += listed
                    if len(pending) >= self._chunk:
                        await self._flush(pending, stats, ck, entry.cursor)
                        pending = []
                if stats.budget_stop or stats.cancelled:
                    break
                if not self.plan.dry_run and await self._cancelled():
                    stats.cancelled = True  # `upscale cancel --batch`: stop at this page
                    break
                stats.last_key = page.cursor
                if stats.listed >= next_tick:
                    next_tick = stats.listed + 1000
                    self.on_progress(stats)
        except ManifestError:
            # A damaged data file yielded nothing; what earlier, verified files gave goes in,
            # and the checkpoint stops before the damaged file: a re-run after the fix goes on.
            if pending:
                await self._flush(pending, stats, ck, stats.last_key)
            await self._settle()
            raise
        else:
            if pending:
                await self._flush(pending, stats, ck, stats.last_key)
            await self._settle()
        finally:
            await pages.aclose()  # stops the reader thread / listing tasks on any exit
            if self._flushing is not None and not self._flushing.done():
                self._flushing.cancel()
            stats.requests = (lister.requests if lister else 0) + (
                existing.requests if existing else 0
            )
        if not self.plan.dry_run:
            await self.redis.hset(  # type: ignore[misc]
                ck,
                mapping={
                    "last_key": stats.last_key,
                    "order": self._lister.order if self._lister else "",
                    "source": self.plan.source,
                    "done": int(not (stats.budget_stop or stats.cancelled)),
                    "finished_at": int(time.time()),
                },
            )
        self.on_progress(stats)
        return stats

    async def _candidates(
        self, entries: list[ObjectEntry], stats: BackfillStats, existing: ExistingOutputs | None
    ) -> list[tuple[ObjectEntry | None, Dest, bool]]:
        """The page's entries that pass the filters, with their destination and whether the
        destination listing found no output there (entry None: left out, already counted)."""
        out: list[tuple[ObjectEntry | None, Dest, bool]] = []
        for e in entries:
            reason = self._skip_reason(e.key, e.size, e.modified)
            if reason:
                stats.skip(reason)
                continue
            try:
                dst = self.maker.dest(e)
            except ValueError:  # an invalid key, or a destination that would overwrite it
                stats.skip("invalid")
                continue
            out.append((e, dst, False))
        if existing is None or not out or self.plan.dry_run:
            return out
        same = [i for i, c in enumerate(out) if c[1][0] == existing.bucket]
        found = await asyncio.to_thread(existing.check, [out[i][1][1] for i in same])
        for i, state in zip(same, found, strict=True):
            entry, d, _ = out[i]
            if state == "exists":
                stats.skip("output exists")
                stats.existing += 1
                out[i] = (None, d, False)
            elif state == "new":
                out[i] = (entry, d, True)
        return out

    async def _cancelled(self) -> bool:
        return bool(await self.redis.hexists(Keys.batch(self.plan.batch), "cancelled_at"))  # type: ignore[misc]  # redis-py stubs

    def _skip_reason(self, key: str, size: int | None, modified: datetime | None) -> str | None:
        if self.guard_prefix is not None and key.startswith(self.guard_prefix):
            return "own output"
        if key.startswith(JobsSettings.REPORT_PREFIX) or self._in_reports(key):
            return "own report"
        if key.endswith("/"):
            return "directory marker"
        return self.plan.filters.match(key, size, modified)

    async def _flush(self, jobs: list[NewJob], stats: BackfillStats, ck: str, cursor: str) -> None:
        """Start enqueuing `specs` once the previous chunk is in: one enqueue in flight while
        the next chunk is built; chunks land (and are checkpointed) in order."""
        await self._settle()
        await self._wait_for_room(len(jobs))
        self._flushing = asyncio.create_task(self._enqueue(jobs, stats, ck, cursor))

    async def _settle(self) -> None:
        if self._flushing is not None:
            task, self._flushing = self._flushing, None
            await task

    async def _enqueue(
        self, jobs: list[NewJob], stats: BackfillStats, ck: str, cursor: str
    ) -> None:
        results = await self.ledger.enqueue_new(jobs)
        dup = sum(1 for outcome, _ in results if outcome == "duplicate")
        refused = sum(1 for outcome, _ in results if outcome == "refused")  # batch cancelled
        stats.duplicates += dup
        stats.enqueued += len(results) - dup - refused
        stats.cancelled = stats.cancelled or refused > 0
        # Checkpoint only after the jobs are safely in Redis: a crash re-reads, dedup absorbs it.
        await self.redis.hset(  # type: ignore[misc]
            ck,
            mapping={
                "last_key": cursor,
                "order": self._lister.order if self._lister else "",
                "listed": stats.listed,
                "enqueued": stats.enqueued,
                "source": self.plan.source,
                "updated_at": int(time.time()),
            },
        )
        self.on_progress(stats)

    async def _wait_for_room(self, n: int) -> None:
        # Polling is right here: the queue drains at the upstream's pace (jobs/s), so a 1 s
        # look costs nothing and needs no event plumbing from every worker.
        while not await bulk_room(self.redis, self.settings, n, self.plan.max_queue):  # noqa: ASYNC110
            await asyncio.sleep(1.0)


def bulk_limit(settings: Settings) -> int:
    """Jobs the bulk lane may hold: ~10 minutes of work at the rate ceiling (min 1,000)."""
    return max(1000, (settings.flow.rpm_ceiling or 600) * 10)


async def bulk_room(redis: Redis, settings: Settings, n: int, limit: int | None = None) -> bool:
    """Whether `n` more jobs fit in the bulk lane (back-pressure for every bulk producer)."""
    return int(await redis.zcard(QUEUES["bulk"])) + n <= (limit or bulk_limit(settings))


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def stats_dict(stats: BackfillStats) -> dict[str, Any]:
    d = asdict(stats)
    d.pop("started")
    d["elapsed_s"] = round(stats.elapsed, 2)
    return d
