"""Lanes: live work takes upstream capacity first, bulk keeps a floor, one limiter for both."""

from __future__ import annotations

import asyncio
import json

from infra.stack import LocalStack
from producers.api import Producer
from tests.integration.conftest import FAST, Buckets, Sim, WorkerProcs, put, wait_state
from tests.support import png
from worker.contract import BULK_QUEUE_NAME, QUEUE_NAME


async def _put_many(stack: LocalStack, bucket: str, prefix: str, n: int) -> list[str]:
    data = png(12, 12)
    keys = [f"{prefix}/{i:03d}.png" for i in range(n)]
    for k in keys:
        put(stack, bucket, k, data)
    return keys


async def test_live_jobs_overtake_a_queued_backfill(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    # 60 RPM with a small burst: the backfill alone could keep the key busy for a minute.
    sim.configure(api_keys={"sim-key": 60}, burst_window_s=2.0)
    bulk = await _put_many(stack, buckets.src, "old", 40)
    live = await _put_many(stack, buckets.src, "new", 4)
    bulk_ids = [
        (await producer.enqueue(f"s3://{buckets.src}/{k}", lane="bulk", batch="bf")).job_id
        for k in bulk
    ]
    assert await producer.redis.zcard(BULK_QUEUE_NAME) == 40
    workers.start(
        2,
        rate_rpm=60,
        rate_burst_factor=2,
        rate_burst_window_s=2.0,
        max_inflight=4,
        bulk_floor=0.1,
        **FAST,
    )
    # let the backfill get going, then live uploads arrive
    async with asyncio.timeout(30):
        while sim.stats()["billed_calls"] < 3:
            await asyncio.sleep(0.1)
    live_ids = [(await producer.enqueue(f"s3://{buckets.src}/{k}")).job_id for k in live]
    for j in live_ids:
        rec = await wait_state(producer, j, "succeeded", "failed", timeout=30)
        assert rec.state == "succeeded" and rec.lane == "live"
    done_bulk = [
        r for r in [await producer.status(j) for j in bulk_ids] if r and r.state == "succeeded"
    ]
    assert len(done_bulk) < 20  # the live jobs did not wait for the backlog
    stats = sim.stats()
    assert stats["by_status"].get("429", 0) == 0
    lanes = await producer.lanes()
    assert lanes["bulk"].depth > 0 and lanes["live"].depth == 0


async def test_a_live_request_promotes_a_job_queued_in_bulk(
    stack: LocalStack, producer: Producer, buckets: Buckets
) -> None:
    put(stack, buckets.src, "x.png", png(8, 8))
    job_id = (await producer.enqueue(f"s3://{buckets.src}/x.png", lane="bulk")).job_id
    again = await producer.enqueue(f"s3://{buckets.src}/x.png")  # the S3 event arrives
    assert again.job_id == job_id and again.outcome == "duplicate"
    assert await producer.redis.zscore(QUEUE_NAME, job_id) is not None
    assert await producer.redis.zscore(BULK_QUEUE_NAME, job_id) is None
    rec = await producer.status(job_id)
    assert rec is not None and rec.lane == "live"


async def test_bulk_keeps_its_floor_while_live_never_stops(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    sim.configure(api_keys={"sim-key": 60}, burst_window_s=2.0, latency_ms=[200, 200])
    bulk = await _put_many(stack, buckets.src, "old", 10)
    live = await _put_many(stack, buckets.src, "new", 30)
    for k in bulk:
        await producer.enqueue(f"s3://{buckets.src}/{k}", lane="bulk", batch="bf")
    live_ids = [(await producer.enqueue(f"s3://{buckets.src}/{k}")).job_id for k in live]
    # floor 20 % of 60 RPM: bulk gets >= 12 calls a minute even with live work always waiting
    workers.start(
        2,
        rate_rpm=60,
        rate_burst_factor=2,
        rate_burst_window_s=2.0,
        max_inflight=4,
        bulk_floor=0.2,
        **FAST,
    )
    async with asyncio.timeout(40):
        while True:
            states = await producer.ledger.batch_summary("bf")
            live_left = [
                j for j in live_ids if (r := await producer.status(j)) and r.state != "succeeded"
            ]
            if states["states"].get("succeeded", 0) >= 3:
                break
            await asyncio.sleep(0.2)
    assert live_left, "bulk only moved after live finished: no floor"


def test_status_shows_depth_rate_and_age_per_lane(
    stack_env: None, stack: LocalStack, buckets: Buckets
) -> None:
    from click.testing import CliRunner

    from producers.cli import main as cli

    put(stack, buckets.src, "a.png", png())  # enqueue reads its ETag: it must exist
    r = CliRunner().invoke(cli, ["enqueue", f"s3://{buckets.src}/a.png", "--batch", "s"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["status"])
    assert r.exit_code == 0, r.output
    assert "live depth" in r.output and "bulk depth" in r.output
    r = CliRunner().invoke(cli, ["status", "--json"])
    data = json.loads(r.output)
    assert data["lanes"]["live"]["depth"] >= 1 and "oldest_age_s" in data["lanes"]["bulk"]
