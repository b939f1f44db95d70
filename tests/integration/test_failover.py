"""A Redis failover mid-run: a primary, a replica and a real Sentinel (no persistence on
either, as a managed Redis without AOF), the primary SIGKILLed while calls are in flight and a
producer keeps enqueuing; the Sentinel promotes the replica. Workers and the producer reach
Redis through the project's Sentinel settings, at default settings otherwise. Judged by the
simulator's bill and by S3: no acknowledged enqueue lost, no image bought twice, the ledger
never below the bill."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from infra.stack import LocalStack
from infra.stack.replicated import ReplicatedRedis
from producers.api import Producer, build_spec
from tests.faults import noise_png
from tests.integration.conftest import Buckets, Sim, WorkerProcs
from worker.redis_conn import connect
from worker.settings import Settings

pytestmark = pytest.mark.slow

CALL_MS = 5000  # each upstream call: long enough that the kill lands mid-call
DEADLINE_S = 120


@pytest.fixture
def replicated() -> Iterator[ReplicatedRedis]:
    with ReplicatedRedis() as rr:
        yield rr


def _settings(stack: LocalStack, rr: ReplicatedRedis, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for k, v in {**stack.env(), **rr.env()}.items():
        monkeypatch.setenv(k, v)
    return Settings()


async def test_failover_mid_run_loses_no_enqueue_and_buys_nothing_twice(
    stack: LocalStack,
    sim: Sim,
    buckets: Buckets,
    workers: WorkerProcs,
    replicated: ReplicatedRedis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings(stack, replicated, monkeypatch)
    s3 = stack.s3_client()
    sim.configure(latency_ms=[CALL_MS, CALL_MS])
    redis = await connect(settings.redis)
    producer = Producer(redis, settings)
    tried: list[str] = []  # every job asked for (its id is known without asking Redis)
    acked: list[str] = []  # jobs the producer was told are `created`

    async def enqueue(i: int) -> None:
        data = noise_png(96)
        key = f"f{i:04d}.png"
        etag = s3.put_object(Bucket=buckets.src, Key=key, Body=data)["ETag"]
        uri = f"s3://{buckets.src}/{key}"
        tried.append(build_spec(uri, etag=etag, settings=settings).job_id)
        try:
            res = await producer.enqueue(uri, etag=etag)
        except Exception:  # Redis away (the failover): not acknowledged, so not promised
            return
        if res.outcome == "created":
            acked.append(res.job_id)

    for i in range(6):
        await enqueue(i)
    env = replicated.env()
    workers.start(2, log_level="WARNING", **env)

    # the kill lands while calls are in flight at the upstream (journaled, not answered)
    async with asyncio.timeout(60):
        while sim.stats()["inflight"] < 3:
            await asyncio.sleep(0.05)
    first = replicated.primary_port()

    # a producer keeps enqueuing through the failover, each acknowledgement recorded
    stop = asyncio.Event()

    async def keep_enqueuing() -> None:
        i = 100
        while not stop.is_set():
            await enqueue(i)
            i += 1
            await asyncio.sleep(0.1)

    feeder = asyncio.create_task(keep_enqueuing())
    await asyncio.sleep(0.5)  # some acknowledged enqueues while the replica keeps up
    # Replication lags (a slow link): what the primary takes now is on the primary alone.
    # Answers arrive and enqueues go on meanwhile.
    billed = sim.stats()["billed_calls"]
    replicated.link.hold()
    async with asyncio.timeout(60):
        while sim.stats()["billed_calls"] < billed + 2:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    replicated.kill_primary()
    await asyncio.to_thread(replicated.wait, lambda: replicated.primary_port() != first, 60)
    await asyncio.sleep(1)  # and some enqueues on the new primary
    stop.set()
    await feeder

    t0 = time.monotonic()
    # every job Redis kept (acknowledged or not) runs to its end before the bill is read
    async with asyncio.timeout(DEADLINE_S):
        while True:
            kept = [r for j in tried if (r := await producer.status(j)) is not None]
            if all(r.final for r in kept) and sim.stats()["inflight"] == 0:
                break
            await asyncio.sleep(0.25)
    stats = sim.stats()
    recs = [await producer.status(j) for j in acked]
    await redis.aclose()

    assert len(acked) > 6, "the producer's enqueues through the failover are part of the test"
    lost = [j for j, r in zip(acked, recs, strict=True) if r is None]
    assert lost == [], f"{len(lost)} acknowledged enqueues lost in the failover"
    assert {r.state for r in recs if r is not None} == {"succeeded"}, Counter(
        r.state for r in recs if r is not None
    )
    bought = Counter(b["image_sha"] for b in stats["bills"])
    twice = {sha: n for sha, n in bought.items() if n > 1}
    assert twice == {}, f"images bought twice: {twice}"
    billed = float(stats["billed_usd"])
    ledger = round(sum(r.spend_usd for r in kept), 6)
    assert ledger >= billed, (ledger, billed)
    for r in recs:
        assert r is not None and r.dest
        bucket, _, key = r.dest.removeprefix("s3://").partition("/")
        s3.head_object(Bucket=bucket, Key=key)
    print(
        f"failover: {len(acked)} acknowledged enqueues, all final "
        f"{time.monotonic() - t0:.0f} s after the failover; billed ${billed:.2f}, "
        f"ledger ${ledger:.2f}; pid {os.getpid()}"
    )
