"""Programmatic enqueue: the Python API every other producer (CLI, events, backfill) uses.

    async with Producer.connect() as p:
        r = await p.enqueue("s3://photos/cat.jpg", prompt="sharper fur")
        print(r.job_id, r.outcome)

Enqueue is deduplicated by the deterministic job id: the same object + destination + knobs is
one job, however many times it is enqueued (a finished job is never redone unless asked). A
source named without ETag / version id is read at enqueue (a HEAD): a replaced object is new.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

from redis.asyncio import Redis

from worker.api import (
    LANES,
    QUEUES,
    BatchSummary,
    Budgets,
    CancelOutcome,
    CancelSummary,
    EnqueueResult,
    Fleet,
    FleetStatus,
    FlowStatus,
    JobRecord,
    JobSpec,
    JobStore,
    Lane,
    LaneStatus,
    PauseInfo,
    S3Object,
    Settings,
    SpendSummary,
    UpscaleParams,
    connect,
    get_settings,
    make_s3_client,
    render_destination,
)

if TYPE_CHECKING:
    from worker.api import ReportResult

RetryState = Literal["failed", "cancelled"]
RETRY_FAILED: tuple[RetryState, ...] = ("failed",)
PIN_THREADS = 32  # concurrent HEADs when many sources are enqueued at once


class SourceNotFound(ValueError):
    """An enqueued source object does not exist."""


def build_spec(
    source: str | S3Object,
    *,
    dest: str | None = None,
    dest_template: str | None = None,
    prompt: str | None = None,
    resemblance: int | None = None,
    detail: int | None = None,
    magic_prompt: str | None = None,
    seed: int | None = None,
    model: str | None = None,
    batch: str | None = None,
    lane: Lane = "live",
    tags: dict[str, str] | None = None,
    callback_url: str | None = None,
    version_id: str | None = None,
    etag: str | None = None,
    settings: Settings | None = None,
) -> JobSpec:
    """Validate a request into a JobSpec (raises ValueError/ValidationError with a clear message)."""
    s = settings or get_settings()
    src = (
        source
        if isinstance(source, S3Object)
        else S3Object.parse(source, version_id=version_id, etag=etag)
    )
    if dest is not None and not dest.endswith("/"):
        dst = S3Object.parse(dest)
        if (dst.bucket, dst.key) == (src.bucket, src.key):
            raise ValueError(f"destination {dest!r} would overwrite the source")
    else:
        dst = render_destination(
            dest or dest_template or s.jobs.dest_template, src, s.jobs.output_format
        )
    return JobSpec(
        source=src,
        dest=dst,
        params=UpscaleParams(
            prompt=prompt,
            resemblance=resemblance,
            detail=detail,
            magic_prompt=magic_prompt,
            seed=seed,
        ),
        model=model or s.upstream.model,
        batch=batch,
        lane=lane,
        tags=tags or {},
        callback_url=callback_url,
    )


class Producer:
    """Enqueue, read and operate the fleet: everything the CLI, webhook and dashboard do."""

    def __init__(self, redis: Redis, settings: Settings | None = None) -> None:
        self.redis = redis
        self.settings = settings or get_settings()
        self.ledger = JobStore.for_settings(redis, self.settings)
        self.flow = Fleet(redis, self.settings)
        self._s3: Any = None  # on first use (`pin_sources`)

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, settings: Settings | None = None, *, fail_fast: bool = False
    ) -> AsyncIterator[Producer]:
        """`fail_fast`: raise `RedisUnavailable` within seconds instead of retrying ~30 s."""
        s = settings or get_settings()
        redis = await connect(s.redis, fail_fast=fail_fast)
        try:
            yield cls(redis, s)
        finally:
            await redis.aclose()

    async def enqueue(self, source: str | S3Object, **kwargs: Any) -> EnqueueResult:
        """One job; without `etag` / `version_id` pinned to the object's content (a HEAD)."""
        spec = build_spec(source, settings=self.settings, **kwargs)
        return (await self.ledger.enqueue(await self.pin_sources([spec])))[0]

    async def enqueue_specs(
        self, specs: Iterable[JobSpec], *, requeue_failed: bool = False
    ) -> list[EnqueueResult]:
        """Bulk enqueue, pipelined (one round trip per 1,000 jobs), deduplicated, pinned."""
        pinned = await self.pin_sources(list(specs))
        return await self.ledger.enqueue(pinned, requeue_failed=requeue_failed)

    async def pin_sources(self, specs: list[JobSpec]) -> list[JobSpec]:
        """`specs`, each source naming neither ETag nor version id given the object's current
        ones (one HEAD each, concurrently): the job id then hashes the content asked for, so a
        replaced object is a new job. Raises `SourceNotFound` (a `ValueError`) for a missing
        object, `AccessDenied`, or botocore's errors when S3 is away."""
        todo = [i for i, s in enumerate(specs) if not (s.source.etag or s.source.version_id)]
        if not todo:
            return specs
        if self._s3 is None:
            self._s3 = make_s3_client(self.settings.s3)
        run = asyncio.get_running_loop().run_in_executor
        workers = min(PIN_THREADS, len(todo), self.settings.s3.max_pool_connections)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="pin")
        try:
            heads = await asyncio.gather(*(run(pool, self._head, specs[i].source) for i in todo))
        finally:  # never blocks the loop: after a failure the rest are dropped, not awaited
            pool.shutdown(wait=False, cancel_futures=True)
        out = list(specs)
        for i, (etag, vid) in zip(todo, heads, strict=True):
            src = out[i].source.model_copy(update={"etag": etag, "version_id": vid})
            out[i] = out[i].model_copy(update={"source": src})
        return out

    def _head(self, obj: S3Object) -> tuple[str | None, str | None]:
        """(ETag, version id) from a HEAD (`null`, an unversioned write's, names nothing)."""
        from botocore.exceptions import ClientError  # boto loads only when a HEAD is needed

        from worker.api import AccessDenied

        try:
            r = self._s3.head_object(Bucket=obj.bucket, Key=obj.key)
        except ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                raise SourceNotFound(f"no such object {obj.uri}") from None
            if status == 403:
                why = "enqueue reads its ETag (s3:GetObject), or pass etag= / version_id="
                raise AccessDenied(f"head {obj.uri}: access denied (403); {why}") from None
            raise
        etag = str(r.get("ETag") or "").strip('"') or None
        version = r.get("VersionId")
        return etag, (str(version) if version and version != "null" else None)

    async def retry(self, job_id: str) -> EnqueueResult | None:
        """Re-enqueue a failed or cancelled job from its ledger record (attempts reset)."""
        rec = await self.ledger.get(job_id)
        if rec is None:
            return None
        spec = spec_from_record(rec)
        return (await self.ledger.enqueue([spec], requeue_failed=True))[0]

    async def retry_batch(
        self,
        batch: str,
        states: Collection[RetryState] = RETRY_FAILED,
        on_page: Callable[[int], None] | None = None,
    ) -> list[EnqueueResult]:
        """Re-enqueue a batch's jobs that ended in `states` (failed, cancelled), from their
        records (within the ledger's retention). Retrying its cancelled jobs lifts the batch's
        cancel, so new jobs may join it again."""
        if "cancelled" in states:
            await self.ledger.reopen_batch(batch)
        out: list[EnqueueResult] = []
        async for ids in self.ledger.final_jobs(batch, set(states)):
            specs = [spec_from_record(r) for r in await self.ledger.get_many(ids)]
            out += await self.ledger.enqueue(specs, requeue_failed=True)
            if on_page:
                on_page(len(out))
        return out

    async def cancel(self, job_ids: Iterable[str]) -> list[CancelOutcome]:
        """Cancel jobs (`cancelled`; `after_call`: the output already paid for is stored
        first, then it ends `cancelled`; `final`: nothing to do; `missing`: no such job). No
        call is journaled for a cancelled job once this returns."""
        return await self.ledger.cancel(job_ids)

    async def cancel_batch(
        self, batch: str, on_page: Callable[[CancelSummary], None] | None = None
    ) -> CancelSummary:
        """Cancel every job of `batch` not yet final, and refuse new jobs into it (a backfill
        still listing stops at its next page). `retry_batch(batch, ["cancelled"])` undoes it."""
        return await self.ledger.cancel_batch(batch, on_page)

    async def fleet_status(self) -> FleetStatus:
        """The whole fleet: jobs per state, lanes, pause, circuit, spend, budgets, and jobs
        finished per minute over the last hour (for `status`, the dashboard, metrics)."""
        flow = await self.flow.status()
        spend = await self.spend()
        s = self.settings.flow
        return FleetStatus(
            states=await self.ledger.state_counts(),
            lanes=await self._lanes(flow),
            spend=spend,
            budgets=Budgets.left(s.budget_total_usd, s.budget_daily_usd, spend),
            finished_per_minute=await self.ledger.finished_per_minute(60),
            depth_per_minute=await self.ledger.depth_per_minute(60),
            flow_control=flow,
        )

    async def set_batch_callback(self, batch: str, url: str) -> None:
        """POST one notice (counts, spend) to `url` when every job of `batch` is final."""
        await self.ledger.set_batch_callback(batch, url)

    async def wait_for_batch(self, batch: str, timeout: float | None = None) -> BatchSummary:
        """Await a batch where every job is final (woken by the ledger's batch events)."""
        return BatchSummary.model_validate(await self.ledger.wait_batch_final(batch, timeout))

    async def batch_summary(self, batch: str) -> BatchSummary:
        """A batch's total, jobs per state and spend (`total` 0: no such batch)."""
        return BatchSummary.model_validate(await self.ledger.batch_summary(batch))

    async def recent_batches(self) -> list[BatchSummary]:
        return [BatchSummary.model_validate(b) for b in await self.ledger.recent_batches()]

    async def recent_failures(self, limit: int) -> list[JobRecord]:
        return await self.ledger.recent_failures(limit)

    async def spend(self) -> SpendSummary:
        """Spend today (UTC) and in total."""
        return SpendSummary.model_validate(await self.ledger.spend())

    async def pause(self, detail: str, *, upstream: str = "") -> PauseInfo | None:
        """Pause the fleet (an operator's pause) unless a pause is in force: that one is
        returned, and left as it is. `upstream`: park one key of the pool instead (its work
        moves to the others); an unknown name raises `UnknownUpstream`."""
        if upstream:
            await self.flow.pause("manual", detail, upstream=upstream)
            return None
        current = await self.flow.pause_info()
        if current is None:
            await self.flow.pause("manual", detail)
        return current

    async def resume(self, *, upstream: str = "") -> bool:
        """Lift a pause: the fleet's and every key's, or one key's (`upstream`). Returns
        whether one was in force."""
        return await self.flow.resume(upstream=upstream)

    async def lanes(self) -> dict[Lane, LaneStatus]:
        """Per lane: queue depth (incl. running and deferred), calls in the last minute, and the
        age of the oldest ready job in seconds."""
        return await self._lanes(await self.flow.status())

    async def _lanes(self, flow: FlowStatus) -> dict[Lane, LaneStatus]:
        now_ms = time.time() * 1000
        async with self.redis.pipeline(transaction=False) as p:
            for lane in LANES:
                p.zcard(QUEUES[lane])
                p.zrange(QUEUES[lane], 0, 0, withscores=True)
            replies = await p.execute()
        calls, bulk_calls = flow.calls_last_minute, flow.bulk_calls_last_minute
        out: dict[Lane, LaneStatus] = {}
        for i, lane in enumerate(LANES):
            oldest = replies[2 * i + 1]
            age = max(0.0, (now_ms - oldest[0][1]) / 1000) if oldest else 0.0
            out[lane] = LaneStatus(
                depth=int(replies[2 * i]),
                calls_last_minute=bulk_calls if lane == "bulk" else calls - bulk_calls,
                oldest_age_s=round(age, 1),
            )
        return out

    async def report(
        self,
        batch: str,
        *,
        failed_only: bool = False,
        to: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> ReportResult:
        """Write `batch`'s completion report to S3: `manifest.json` and gzipped CSV parts, per
        object one row (failed-only: the rows not succeeded), in the batch's report folder or
        at `to` (`s3://bucket/prefix/`). A full report of a batch that has ended starts its
        records' retention. `progress(read, total)` is called after each page of ids. Raises
        `NoSuchBatch`, or `NothingToReport` while no job of it has ended (and no `to`)."""
        from worker.api import report_batch  # boto3 loads on first use

        return await report_batch(
            self.redis, self.settings, batch, failed_only=failed_only, to=to, progress=progress
        )

    async def status(self, job_id: str) -> JobRecord | None:
        return await self.ledger.get(job_id)

    async def wait_for(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Await a job's final state (event-driven: the ledger publishes each final state)."""
        return await self.ledger.wait_final(job_id, timeout)

    async def wait_for_all(
        self, job_ids: Iterable[str], timeout: float | None = None
    ) -> list[JobRecord]:
        """Await several jobs (e.g. a batch you enqueued) concurrently."""
        async with asyncio.timeout(timeout):
            return list(await asyncio.gather(*(self.ledger.wait_final(j) for j in job_ids)))


def spec_from_record(rec: JobRecord) -> JobSpec:
    if rec.payload is None:
        raise ValueError(f"job {rec.job_id} has no stored request to re-enqueue")
    return JobSpec.model_validate(rec.payload)
