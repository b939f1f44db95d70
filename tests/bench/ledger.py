"""The ledger at scale: Redis bytes per queued job and per finished record, what is left after
the retention window, and how long a stranded job waits for the healer behind a backlog.

    python -m tests.bench.ledger [QUEUED] [FINISHED]    (default 200,000 and 20,000; `make bench`)

Real redis-server and S3 (the local stack, no simulator): jobs are enqueued with the project's
own `Ledger.enqueue`, finished through the real transitions (start, call journal, paid answer,
finish), reported with the real report writer, and healed with the real `heal` at the cadence
the worker's lifecycle uses. References: the issue's figures for the code before (2,597 B per
queued job, 2,600 B per finished record for ever, a heal pass of 500 jobs per 5 s).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from infra.stack import LocalStack
from worker.contract import DEFAULT_DEST_TEMPLATE, JobSpec, JobState, S3Object, render_destination
from worker.keys import ARQ_IN_PROGRESS_PREFIX, PREFIX, QUEUES, Keys, first_of
from worker.leases import HEAL_EVERY_S, HEAL_STALE_MS, IN_PROGRESS_GRACE_MS
from worker.ledger import Ledger, PaidOutput, PaidResult
from worker.lua import register
from worker.report.writer import report_batch
from worker.settings import Settings

console = Console(stderr=True)
RETENTION_S = 3  # the short window this bench waits out
BEFORE = {"queued": 2597, "finished": 2600, "heal_per_pass": 500}


def spec(i: int, batch: str) -> JobSpec:
    src = S3Object(
        bucket="bench-src",
        key=f"photos/{i // 1000:04d}/img {i:07d}.png",
        etag="0123456789abcdef0123456789abcdef",
    )
    dest = render_destination(DEFAULT_DEST_TEMPLATE, src)
    return JobSpec(source=src, dest=dest, batch=batch, lane="bulk")


async def used(r: Redis) -> int:
    return int((await r.info("memory"))["used_memory"])


async def key_bytes(r: Redis, pattern: str, sample: int = 2000) -> tuple[int, float]:
    """How many keys match, and their mean MEMORY USAGE (a sample)."""
    n, total, seen = 0, 0, 0
    async for k in r.scan_iter(match=pattern, count=5000):
        n += 1
        if seen < sample:
            total += int(await r.memory_usage(k) or 0)
            seen += 1
    return n, (total / seen if seen else 0.0)


async def finish(ledger: Ledger, r: Redis, job_ids: list[str]) -> None:
    """Each job through the real transitions, 200 at a time, as workers would."""

    async def one(i: int, job_id: str) -> None:
        token, slot = f"run{i}", f"default/s{i}"
        await ledger.start(job_id, token, 20_000)
        await ledger.call_begin(job_id, token, slot, 60_000)
        paid = PaidResult(
            request_id=f"req_{i:016x}",
            outputs=[PaidOutput(url="http://up/x.png")],
            cost_micros=60_000,
        )
        await ledger.call_answered(job_id, slot, paid)
        await ledger.finish(
            job_id,
            token,
            JobState.SUCCEEDED,
            {"output_bytes": 123_456, "output_resolution": "2048x1536"},
        )
        # what arq does once the run returns: its payload and queue entry go
        await r.delete(Keys.arq_job(job_id), Keys.arq_in_progress(job_id))
        await r.zrem(QUEUES["bulk"], job_id)

    for start in range(0, len(job_ids), 200):
        await asyncio.gather(
            *(one(start + i, j) for i, j in enumerate(job_ids[start : start + 200]))
        )
        if start and start % 10_000 == 0:
            console.print(f"  finished {start:,}")


async def stranded_wait(ledger: Ledger, r: Redis) -> tuple[float, float]:
    """Claim a job, let arq drop it (as past its own max tries), and heal as the lifecycle
    does (one pass every HEAL_EVERY_S, jobs unchecked for HEAL_STALE_MS): seconds until it is
    queued again, and the slowest heal pass."""
    reply = await register(r, "claim")(
        keys=[QUEUES["bulk"], first_of(QUEUES["bulk"])],
        args=[PREFIX, ARQ_IN_PROGRESS_PREFIX, 600_000, 1, 100],
    )
    job = reply[0].decode()
    await r.delete(Keys.arq_job(job), Keys.arq_in_progress(job))
    await r.zrem(QUEUES["bulk"], job)
    t0, slowest = time.monotonic(), 0.0
    while await r.zscore(QUEUES["bulk"], job) is None:
        p0 = time.monotonic()
        await ledger.heal(
            stale_ms=HEAL_STALE_MS, in_progress_ttl_ms=610_000, grace_ms=IN_PROGRESS_GRACE_MS
        )
        slowest = max(slowest, time.monotonic() - p0)
        if await r.zscore(QUEUES["bulk"], job) is None:
            await asyncio.sleep(HEAL_EVERY_S)
    return time.monotonic() - t0, slowest


async def run(stack: LocalStack, queued: int, finished: int) -> Table:
    os.environ.update({**stack.env(), "UPSCALE_LEDGER_RETENTION": str(RETENTION_S)})
    settings = Settings()
    r = Redis.from_url(settings.redis.url)
    s3 = stack.s3_client()
    s3.create_bucket(Bucket="bench-src-upscaled")
    ledger = Ledger(r, retention_ms=RETENTION_S * 1000)

    # queued: a backlog in one batch
    base = await used(r)
    specs = [spec(i, "backlog") for i in range(queued)]
    t0 = time.monotonic()
    for start in range(0, queued, 5000):
        await ledger.enqueue(specs[start : start + 5000])
    enqueue_s = time.monotonic() - t0
    per_queued = (await used(r) - base) / queued
    _, record_queued = await key_bytes(r, Keys.job("*"), 500)
    console.print(
        f"  {queued:,} queued: {per_queued:,.0f} B/job ({queued / enqueue_s:,.0f} jobs/s)"
    )
    healed_s, heal_pass_s = await stranded_wait(ledger, r)

    # finished: a second batch through the real transitions
    done_specs = [spec(queued + i, "done") for i in range(finished)]
    await ledger.enqueue(done_specs)
    await finish(ledger, r, [s.job_id for s in done_specs])
    _, done_list = await key_bytes(r, Keys.batch_done("done"), 1)
    sample = [s.job_id for s in done_specs[:2000]]
    rec = sum([int(await r.memory_usage(Keys.job(j)) or 0) for j in sample]) / len(sample)
    per_record = rec + done_list / finished

    # the report starts the retention; after the window nothing of the batch is left
    await report_batch(r, settings, "done")
    await asyncio.sleep(RETENTION_S + 1)
    left = sum([await r.exists(Keys.job(j)) for j in (s.job_id for s in done_specs)])
    left += await r.exists(Keys.batch_done("done"))
    await r.aclose()

    t = Table(title="ledger at scale (real redis-server: used_memory Δ, and keys' MEMORY USAGE)")
    for c in ("figure", "now", "before / target"):
        t.add_column(c, justify="right" if c != "figure" else "left")
    t.add_row(
        f"Redis per queued job ({queued:,} queued)",
        f"{per_queued:,.0f} B (its record {record_queued:,.0f} B)",
        f"{BEFORE['queued']:,} B / ≤ 1,000 B",
    )
    t.add_row(
        f"per finished record, before expiry ({finished:,})",
        f"{per_record:,.0f} B (record + its done-list entry)",
        f"{BEFORE['finished']:,} B for ever / ≤ 300 B",
    )
    t.add_row(f"left after the report + {RETENTION_S} s retention", f"{left} keys", "0")
    t.add_row(
        f"a stranded job back in its queue, {queued:,} queued",
        f"{healed_s:.1f} s (slowest heal pass {heal_pass_s * 1000:.1f} ms)",
        f"≈{queued / BEFORE['heal_per_pass'] * HEAL_EVERY_S / 60:,.0f} min / ≤ 60 s",
    )
    return t


def main() -> None:
    queued = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    finished = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    with LocalStack(with_simulator=False) as stack:
        table = asyncio.run(run(stack, queued, finished))
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
