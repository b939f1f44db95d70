"""The worker's public API: everything producers and operator tools (`producers/`) may use.

`producers/` imports nothing else of the worker package (`tests/unit/test_public_api.py` keeps
it so), so the rest of `worker/` may change shape without producers noticing. The job contract
is defined in `worker.contract`, which is not a second public module: the names producers need
are re-exported here. Everything here is re-exported or a thin wrapper over worker parts.

- the job contract: `JobSpec`, `S3Object`, `UpscaleParams`, `Lane` (`LANES`), `job_id_for`,
  `render_destination`, and their plain-string forms for bulk intake (`JobIdentity`,
  `destination_of`, `check_object`, `NewJob`, `ledger_fields`), `usd_to_micros`, `STAGING_PREFIX`, `META_JOB_ID`, the key
  names (`Keys`, `QUEUES`);
- jobs: `JobStore` (deduplicating enqueue, cancel and ledger reads), `EnqueueResult`
  (`EnqueueOutcome`), `CancelSummary` (`CancelOutcome`), `JobRecord`, `JobState`;
- the fleet: `Fleet` (pause, resume, flow-control status), `FlowStatus`, `UpstreamStatus`
  (one key of the pool), `PauseInfo`, `UnknownUpstream`, `fleet_metrics`;
- what operators read (typed read models, dumped as JSON): `FleetStatus` (jobs per state,
  lanes, spend, budgets, flow control), `LaneStatus`, `BatchSummary`, `SpendSummary`,
  `Budgets`;
- settings, Redis and logs: `Settings` (parsed from the environment) and its sections
  (`RedisSettings`, `S3Settings`, `UpstreamSettings`, `FlowSettings`, `JobsSettings`,
  `CallbackSettings`, `ProducerSettings`, `OpsSettings`), `get_settings`, `env_var`, `connect`,
  `RedisUnavailable`, `redis_where`, `redis_reason`, `configure_logging`, `redact`,
  `register_secret`;
- S3: `make_s3_client`, `check_bucket` and the errors the CLI turns into one line
  (`StorageError`, `SourceMissing`, `AccessDenied`);
- reports: `report_batch` (a batch's completion report, written to S3), `ReportResult`, and
  what it raises when there is nothing to write (`NoSuchBatch`, `NothingToReport`);
- processes: `run_worker_process`, `check_health` (`Check`);
- the upstream's books: `reconcile` (our ledger beside each upstream's usage per day and
  batch: a `Reconciliation` of `ReconciliationRow`s; `ALL_BATCHES`; `BooksUnreadable`),
  `save_last` / `last_reconciliation` (kept in Redis), `reconcile_metrics` (its gauges).

Heavy modules (boto3, the arq app) load on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from worker.contract import (
    LANES,
    META_JOB_ID,
    QUEUES,
    STAGING_PREFIX,
    JobIdentity,
    JobSpec,
    JobState,
    Keys,
    Lane,
    S3Object,
    UpscaleParams,
    check_object,
    destination_of,
    job_id_for,
    render_destination,
    usd_to_micros,
)
from worker.fleet import BatchSummary, Budgets, Fleet, FleetStatus, LaneStatus, SpendSummary
from worker.flow import PauseInfo
from worker.flow.control import UnknownUpstream
from worker.flow.status import FlowStatus, UpstreamStatus
from worker.ledger import EnqueueResult, JobRecord, Ledger, NewJob
from worker.ledger.batches import (
    CancelSummary,
    cancel_batch,
    final_jobs,
    reopen_batch,
    set_batch_callback,
)
from worker.ledger.reads import LedgerReads, text
from worker.ledger.records import CancelOutcome, EnqueueOutcome, ledger_fields
from worker.ledger.transitions import DEFAULT_RETENTION_MS
from worker.logs import configure_logging, redact, register_secret
from worker.metrics import fleet_metrics, reconcile_metrics
from worker.reconcile import (
    ALL_BATCHES,
    BooksUnreadable,
    Reconciliation,
    ReconciliationRow,
    last_reconciliation,
    reconcile,
    save_last,
)
from worker.redis_conn import RedisUnavailable, connect
from worker.redis_conn import reason as redis_reason
from worker.redis_conn import where as redis_where
from worker.replicas import Replicas
from worker.settings import (
    CallbackSettings,
    FlowSettings,
    JobsSettings,
    OpsSettings,
    ProducerSettings,
    RedisSettings,
    S3Settings,
    Settings,
    UpstreamSettings,
    env_var,
    get_settings,
)

if TYPE_CHECKING:
    from worker.health import Check
    from worker.report.writer import NoSuchBatch, NothingToReport, ReportResult, report_batch
    from worker.storage import AccessDenied, SourceMissing, StorageError

__all__ = [
    "ALL_BATCHES",
    "LANES",
    "META_JOB_ID",
    "QUEUES",
    "STAGING_PREFIX",
    "AccessDenied",
    "BatchSummary",
    "BooksUnreadable",
    "Budgets",
    "CallbackSettings",
    "CancelOutcome",
    "CancelSummary",
    "Check",
    "EnqueueOutcome",
    "EnqueueResult",
    "Fleet",
    "FleetStatus",
    "FlowSettings",
    "FlowStatus",
    "JobIdentity",
    "JobRecord",
    "JobSpec",
    "JobState",
    "JobStore",
    "JobsSettings",
    "Keys",
    "Lane",
    "LaneStatus",
    "NewJob",
    "NoSuchBatch",
    "NothingToReport",
    "OpsSettings",
    "PauseInfo",
    "ProducerSettings",
    "Reconciliation",
    "ReconciliationRow",
    "RedisSettings",
    "RedisUnavailable",
    "ReportResult",
    "S3Object",
    "S3Settings",
    "Settings",
    "SourceMissing",
    "SpendSummary",
    "StorageError",
    "UnknownUpstream",
    "UpscaleParams",
    "UpstreamSettings",
    "UpstreamStatus",
    "check_bucket",
    "check_health",
    "check_object",
    "configure_logging",
    "connect",
    "destination_of",
    "env_var",
    "fleet_metrics",
    "get_settings",
    "job_id_for",
    "last_reconciliation",
    "ledger_fields",
    "make_s3_client",
    "reconcile",
    "reconcile_metrics",
    "redact",
    "redis_reason",
    "redis_where",
    "register_secret",
    "render_destination",
    "report_batch",
    "run_worker_process",
    "save_last",
    "usd_to_micros",
]

# boto3 (under storage and health) is slow to import and most commands never touch S3.
_LAZY = {
    "AccessDenied": "worker.storage",
    "SourceMissing": "worker.storage",
    "StorageError": "worker.storage",
    "Check": "worker.health",
    "NoSuchBatch": "worker.report.writer",
    "NothingToReport": "worker.report.writer",
    "ReportResult": "worker.report.writer",
    "report_batch": "worker.report.writer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class JobStore(LedgerReads):
    """The ledger as producers see it: deduplicating enqueue, cancel, plus every read (job
    records, batches, spend, per-minute series, waits). The worker's transitions are not part
    of it. `retention_ms`: how long a record it ends (cancel) stays (`UPSCALE_LEDGER_RETENTION`);
    `redis_settings`: how many replicas acknowledge an enqueue (`UPSCALE_REDIS_WAIT_*`)."""

    def __init__(
        self,
        redis: Redis,
        *,
        retention_ms: int = DEFAULT_RETENTION_MS,
        redis_settings: RedisSettings | None = None,
    ) -> None:
        super().__init__(redis)
        replicas = Replicas.from_settings(redis, redis_settings) if redis_settings else None
        self._ledger = Ledger(redis, retention_ms=retention_ms, replicas=replicas)

    @classmethod
    def for_settings(cls, redis: Redis, settings: Settings) -> JobStore:
        return cls(
            redis,
            retention_ms=settings.jobs.ledger_retention_s * 1000,
            redis_settings=settings.redis,
        )

    async def cancel(self, job_ids: Iterable[str]) -> list[CancelOutcome]:
        """Cancel jobs: `cancelled` at once, or `after_call` (the output already paid for is
        stored first), `final` (nothing to do) or `missing` (no such job)."""
        ids = list(job_ids)
        outcomes = await self._ledger.cancel(ids)
        ended = [j for j, o in zip(ids, outcomes, strict=True) if o == "cancelled"]
        batches: set[str] = set()
        if ended:
            async with self.redis.pipeline(transaction=False) as pipe:
                for j in ended:
                    pipe.hget(Keys.job(j), "batch")
                batches = {text(b) for b in await pipe.execute() if b}
        for batch in batches:
            await self._batch_may_have_ended(batch)
        return outcomes

    async def cancel_batch(
        self, batch: str, on_page: Callable[[CancelSummary], None] | None = None
    ) -> CancelSummary:
        """Cancel every open job of a batch and refuse new ones into it."""
        summary = await cancel_batch(self.redis, self._ledger, batch, on_page)
        await self._batch_may_have_ended(batch)
        return summary

    async def _batch_may_have_ended(self, batch: str) -> None:
        """A cancel ended jobs outside any worker: a batch it ended gets its report (and its
        notice) queued as a worker's last job of it would have."""
        from arq.connections import ArqRedis

        from worker.callbacks import queue_batch_notice_if_done

        await queue_batch_notice_if_done(
            ArqRedis(connection_pool=self.redis.connection_pool), batch
        )

    async def reopen_batch(self, batch: str) -> None:
        await reopen_batch(self.redis, batch)

    async def set_batch_callback(self, batch: str, url: str) -> None:
        """POST one notice (counts, spend) to `url` when every job of `batch` is final."""
        await set_batch_callback(self.redis, batch, url)

    def final_jobs(self, batch: str, states: Collection[str]) -> AsyncIterator[list[str]]:
        """A batch's final jobs in `states` (`JobState` members, or their names), a page of ids
        at a time."""
        return final_jobs(self.redis, batch, states)

    async def enqueue(
        self, specs: Iterable[JobSpec], *, requeue_failed: bool = False
    ) -> list[EnqueueResult]:
        """Enqueue, pipelined, deduplicated by job id (`created`, `duplicate` or `requeued`)."""
        return await self._ledger.enqueue(list(specs), requeue_failed=requeue_failed)

    async def enqueue_new(self, jobs: list[NewJob]) -> list[tuple[EnqueueOutcome, str]]:
        """`enqueue` for jobs a bulk producer made itself (`SpecMaker.job`): (outcome, state)
        per job, in order."""
        return await self._ledger.enqueue_new(jobs)


def make_s3_client(settings: S3Settings, *, fail_fast: bool = False) -> Any:
    """A boto3 S3 client for `settings` (`fail_fast`: short timeouts, no retries)."""
    from worker import storage

    return storage.make_s3_client(settings, fail_fast=fail_fast)


async def check_bucket(settings: S3Settings, bucket: str) -> None:
    """One quick HEAD of `bucket`: raises `SourceMissing` if it does not exist, another
    `StorageError` if S3 or the credentials are wrong."""
    from worker.storage import Storage

    await Storage(settings, make_s3_client(settings, fail_fast=True)).head_bucket(bucket)


def run_worker_process(*, burst: bool = False) -> None:
    """Run this process as a worker (both lanes) until SIGTERM/SIGINT; `burst`: until the
    queues are empty."""
    from worker.app import main  # arq and the job: only when a worker is wanted

    main(burst=burst)


async def check_health(
    settings: Settings, explain: Callable[[BaseException], str]
) -> dict[str, Check]:
    """Redis, S3 and the upstream (URL, key, model; then the model's published request shape
    on the gateway: `schema`; never a billed call), all at once, each with a short timeout.
    `explain(exc) -> str` words a failure."""
    import asyncio

    import httpx

    from worker.health import CHECK_TIMEOUT_S, check_redis, check_s3, check_upstream_and_schema
    from worker.storage import Storage
    from worker.upstream import make_upstream

    async def redis_check() -> Check:
        try:
            redis = await connect(settings.redis, fail_fast=True)
        except Exception as e:
            return False, explain(e)
        try:
            return await check_redis(redis, explain)
        finally:
            await redis.aclose()

    storage = Storage(settings.s3, make_s3_client(settings.s3, fail_fast=True))
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(CHECK_TIMEOUT_S, connect=2), follow_redirects=False
    )
    upstream = make_upstream(settings.upstream, client)
    try:
        redis, s3, up = await asyncio.gather(
            redis_check(),
            check_s3(storage, settings.ops.health_bucket, explain),
            check_upstream_and_schema(upstream),
        )
    finally:
        await upstream.aclose()
    return {"redis": redis, "s3": s3, **up}
