"""`write_report`: a batch's completion report, streamed. The done list is read in pages
(LRANGE), each page's records in one pipelined round trip (HMGET of the fields a row needs),
and rows go to one gzipped part per state, rolled over every `rows_per_part` rows: memory is
flat whatever the batch's size. The manifest is written last, so a reader who finds it finds
every part it names; parts a former run left and this one did not write are deleted.

A full report (not failed-only) of a batch that has ended starts its records' retention.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from redis.asyncio import Redis

from worker.contract import META_JOB_ID, JobState, S3Object
from worker.keys import Keys
from worker.ledger.reads import text
from worker.report.batch import batch_end
from worker.report.parts import GzipObject
from worker.report.retention import Retention
from worker.report.rows import (
    FIELDS,
    Part,
    Row,
    Scope,
    Totals,
    csv_bytes,
    in_scope,
    manifest,
    manifest_bytes,
    part_key,
    row_from,
    usd,
)
from worker.settings import Settings
from worker.storage import Storage, classify

ROWS_PER_PART = 1_000_000
PAGE = 1000
Progress = Callable[[int, int], None]  # (ids read, ids in the report)


class NoSuchBatch(LookupError):
    def __init__(self, batch: str) -> None:
        super().__init__(f"no such batch: {batch}")


class NothingToReport(LookupError):
    """No job of the batch has ended: there is no destination bucket to put the report in."""


@dataclass(frozen=True)
class ReportResult:
    batch: str
    scope: Scope
    manifest: str  # s3://bucket/prefix/manifest.json
    rows: dict[str, int]  # per state
    cost_usd: str
    possible_cost_usd: str
    parts: list[Part]
    skipped_records: int  # on the done list but gone, or running again
    ended: bool  # every job of the batch is final
    expiring: int | None  # records given the retention (None: retention not started)
    retention_s: int | None

    @property
    def row_count(self) -> int:
        return sum(self.rows.values())


@dataclass
class _Series:
    """The parts of one state: the open one, its row count, and those written."""

    obj: GzipObject | None = None
    n: int = 0
    rows: int = 0
    done: list[Part] = field(default_factory=list)


async def write_report(
    redis: Redis,
    storage: Storage,
    settings: Settings,
    batch: str,
    *,
    failed_only: bool = False,
    to: str | None = None,
    rows_per_part: int = ROWS_PER_PART,
    page: int = PAGE,
    progress: Progress | None = None,
) -> ReportResult:
    """Write `batch`'s report (re-running overwrites the same keys). `to`: the report's own
    `s3://bucket/prefix/`, instead of the batch's folder under the report root."""
    scope: Scope = "FailedTasksOnly" if failed_only else "AllTasks"
    done = Keys.batch_done(batch)
    upto = int(await redis.llen(done))  # type: ignore[misc]  # a snapshot: later ids wait for the next
    if upto == 0 and not await redis.exists(Keys.batch(batch)):
        raise NoSuchBatch(batch)
    bucket, prefix = await _location(redis, settings, batch, failed_only, to)
    meta = {META_JOB_ID: f"report:{batch}"}  # the worker never takes our output as a source
    series: dict[JobState, _Series] = defaultdict(_Series)
    totals = Totals()
    try:
        async for start, ids, values in _pages(redis, done, upto, page):
            by_state: dict[JobState, list[Row]] = defaultdict(list)
            for job_id, v in zip(ids, values, strict=True):
                row = row_from(job_id, v)
                if row is None:
                    totals.skipped_records += 1
                elif in_scope(row.state, scope):
                    totals.add(row)
                    by_state[row.state].append(row)
            for state, rows in by_state.items():
                await _write(
                    storage, series[state], bucket, prefix, state, rows, rows_per_part, meta
                )
            if progress is not None:
                progress(start + len(ids), upto)
        for state, s in series.items():
            await _close(s, state, bucket)
    except BaseException:
        for s in series.values():
            if s.obj is not None:
                await s.obj.abort()
        raise
    parts = sorted((p for s in series.values() for p in s.done), key=lambda p: p.key)
    doc = manifest(
        batch=batch,
        scope=scope,
        parts=parts,
        totals=totals,
        created_ms=int(time.time() * 1000),
    )
    manifest_key = f"{prefix}manifest.json"
    await storage.put_bytes(
        S3Object(bucket=bucket, key=manifest_key),
        manifest_bytes(doc),
        content_type="application/json",
        metadata=meta,
    )
    # after the manifest: whoever reads either manifest finds the parts it names
    await _delete_stale(storage, bucket, prefix, {p.key for p in parts})
    ended = await batch_end(redis, batch) is not None
    expiring: int | None = None
    retention_s = settings.jobs.ledger_retention_s
    if ended and not failed_only:
        expiring = await Retention(redis).start(batch, upto=upto, retention_ms=retention_s * 1000)
    return ReportResult(
        batch=batch,
        scope=scope,
        manifest=f"s3://{bucket}/{manifest_key}",
        rows=dict(sorted(totals.rows.items())),
        cost_usd=usd(totals.cost_micros),
        possible_cost_usd=usd(totals.possible_micros),
        parts=parts,
        skipped_records=totals.skipped_records,
        ended=ended,
        expiring=expiring,
        retention_s=retention_s if expiring is not None else None,
    )


async def _pages(
    redis: Redis, done: str, upto: int, page: int
) -> AsyncIterator[tuple[int, list[str], list[Any]]]:
    """(start, ids, their records' `FIELDS`) for each page of the done list's first `upto` ids:
    one LRANGE and one pipelined round trip of HMGETs a page."""
    for start in range(0, upto, page):
        raw = await redis.lrange(done, start, min(upto, start + page) - 1)  # type: ignore[misc]
        ids = [text(i) for i in raw]
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(Keys.job(job_id), list(FIELDS))
            yield start, ids, await pipe.execute()


async def _location(
    redis: Redis, settings: Settings, batch: str, failed_only: bool, to: str | None
) -> tuple[str, str]:
    """(bucket, key prefix ending in `/` or empty) of the report."""
    if to:
        if not to.startswith("s3://") or not to[5:].split("/")[0]:
            raise ValueError(f"--to must be s3://bucket/prefix/: {to!r}")
        bucket, _, prefix = to[5:].partition("/")
        return bucket, prefix if not prefix or prefix.endswith("/") else prefix + "/"
    dest = ""
    if not settings.jobs.report_uri:
        found = await _first_dest_bucket(redis, batch)
        if found is None:
            raise NothingToReport(
                f"batch {batch} has no finished job yet: nothing to report (or pass --to)"
            )
        dest = found
    bucket, _, prefix = settings.jobs.report_root(dest).removeprefix("s3://").partition("/")
    return bucket, f"{prefix}{batch}/" + ("failed-only/" if failed_only else "")


async def _first_dest_bucket(redis: Redis, batch: str) -> str | None:
    """The destination bucket of the first job of the batch that ended (and is still there)."""
    ids = await redis.lrange(Keys.batch_done(batch), 0, PAGE - 1)  # type: ignore[misc]
    async with redis.pipeline(transaction=False) as pipe:
        for i in ids:
            pipe.hget(Keys.job(text(i)), "dest")
        dests = await pipe.execute()
    for d in dests:
        if d:
            return text(d).removeprefix("s3://").split("/")[0]
    return None


async def _write(
    storage: Storage,
    s: _Series,
    bucket: str,
    prefix: str,
    state: JobState,
    rows: list[Row],
    rows_per_part: int,
    meta: dict[str, str],
) -> None:
    while rows:
        if s.obj is None:
            s.n += 1
            s.rows = 0
            s.obj = GzipObject(storage, bucket, part_key(prefix, state, s.n), metadata=meta)
        take = rows[: rows_per_part - s.rows]
        rows = rows[len(take) :]
        await s.obj.write(csv_bytes(take))
        s.rows += len(take)
        if s.rows >= rows_per_part:
            await _close(s, state, bucket)


async def _close(s: _Series, state: JobState, bucket: str) -> None:
    if s.obj is None:
        return
    obj, s.obj = s.obj, None
    md5 = await obj.close()
    s.done.append(
        Part(state=state, bucket=bucket, key=obj.key, md5=md5, rows=s.rows, bytes=obj.size)
    )


async def _delete_stale(storage: Storage, bucket: str, prefix: str, keep: set[str]) -> None:
    """Parts under `<prefix>results/` this run did not write (a former run's: more parts, or a
    state no row has now)."""

    def stale() -> list[str]:
        pages = storage.s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{prefix}results/"
        )
        return [o["Key"] for p in pages for o in p.get("Contents", []) if o["Key"] not in keep]

    try:
        keys = await asyncio.to_thread(stale)
        for i in range(0, len(keys), 1000):
            objects: list[dict[str, Any]] = [{"Key": k} for k in keys[i : i + 1000]]
            await asyncio.to_thread(
                storage.s3.delete_objects, Bucket=bucket, Delete={"Objects": objects}
            )
    except (ClientError, BotoCoreError) as e:
        raise classify(e, f"report s3://{bucket}/{prefix}results/") from None


async def report_batch(
    redis: Redis,
    settings: Settings,
    batch: str,
    *,
    failed_only: bool = False,
    to: str | None = None,
    progress: Progress | None = None,
) -> ReportResult:
    """`write_report` with an S3 client of its own (producers: `worker.api.report_batch`)."""
    storage = Storage(settings.s3)
    return await write_report(
        redis, storage, settings, batch, failed_only=failed_only, to=to, progress=progress
    )
