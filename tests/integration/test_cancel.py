"""`upscale cancel` on a running batch, with real worker processes at default settings: judged
by the simulator's call log (the bill) and by S3, not by the project's own word."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from infra.stack import LocalStack
from producers.api import Producer, build_spec
from tests.integration.conftest import Buckets, Sim, WorkerProcs, put
from tests.support import HTTP_TIMEOUT_S, png
from worker.contract import JobState
from worker.keys import QUEUES

CANCELLED, SUCCEEDED = JobState.CANCELLED, JobState.SUCCEEDED

pytestmark = pytest.mark.slow

JOBS = 10_000
PROCS = 4


def _cli(stack: LocalStack, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run `upscale ...` as a user would; returns it and when it returned (unix seconds)."""
    done = subprocess.run(
        [sys.executable, "-m", "producers.cli", *args],
        env={**os.environ, **stack.env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, time.time()


async def test_cancel_a_running_batch_stops_every_call_and_stores_what_was_paid(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    sim.configure(latency_ms=[300, 900])  # calls stay in flight long enough to be caught
    put(stack, buckets.src, "one.png", png(32, 24))
    # 10,000 distinct jobs of one source: each its own seed and destination
    specs = [
        build_spec(
            f"s3://{buckets.src}/one.png",
            dest=f"s3://{buckets.dest}/out/{i:05d}.png",
            seed=i,
            batch="wrong-prompt",
            lane="bulk",
            settings=producer.settings,
        )
        for i in range(JOBS)
    ]
    assert {r.outcome for r in await producer.enqueue_specs(specs)} == {"created"}
    workers.start(PROCS)

    async with httpx.AsyncClient(base_url=stack.simulator_url, timeout=HTTP_TIMEOUT_S) as admin:

        async def stats() -> dict[str, object]:
            data: dict[str, object] = (await admin.get("/_admin/stats")).json()
            return data

        # the batch is running: calls answered and calls in flight at the upstream
        async with asyncio.timeout(60):
            while not ((s := await stats())["calls"] >= 40 and s["inflight"]):  # type: ignore[operator]
                await asyncio.sleep(0.05)
        done, returned_at = await asyncio.to_thread(
            _cli, stack, "cancel", "--batch", "wrong-prompt", "--json"
        )
        assert done.returncode == 0, done.stderr
        counts = json.loads(done.stdout)

        # every job ends, the ones whose call was in flight once their output is stored
        async with asyncio.timeout(60):
            while (await producer.batch_summary("wrong-prompt")).final < JOBS:
                await asyncio.sleep(0.2)
        log = (await stats())["log"]
        bill = await stats()

    summary = await producer.batch_summary("wrong-prompt")
    cancelled, succeeded = (summary.states.get(s, 0) for s in (CANCELLED, SUCCEEDED))
    assert cancelled + succeeded == JOBS and cancelled > 9000
    assert counts["cancelled"] + counts.get("after_call", 0) == cancelled
    # no call went out for a job after the command returned, but those it found in flight
    late = [c for c in log if c["t"] > returned_at]  # type: ignore[attr-defined]
    late_jobs = {c["idem"].rsplit(":", 1)[0] for c in late}
    assert len(late_jobs) <= counts.get("after_call", 0), late
    for job_id in late_jobs:
        rec = await producer.status(job_id)
        assert rec is not None and rec.state == "cancelled" and "in flight" in (rec.note or "")
    # every image paid for is stored: one output per billed call, none for the rest
    listed = stack.s3_client().list_objects_v2(Bucket=buckets.dest, Prefix="out/")
    stored = {o["Key"] for o in listed.get("Contents", [])}
    assert len(stored) == bill["billed_calls"] < JOBS  # type: ignore[operator]
    # the queues are empty: cancelled jobs freed their queue entries and payloads
    assert await producer.redis.zcard(QUEUES["bulk"]) == 0
    print(
        f"cancel of {JOBS:,} jobs under {PROCS} workers: {counts}, calls after it returned: "
        f"{len(late)} (of jobs in flight), billed {bill['billed_calls']}, stored {len(stored)}"
    )
