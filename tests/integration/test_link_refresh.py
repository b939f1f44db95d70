"""An async gateway job's result link that expired while the result could not be stored (S3
down for 30 minutes, on the simulator's clock) is signed anew by re-reading the job: stored
without a second call. Only when the upstream says the result is gone (its file no longer
kept, 7 days) is a new call made."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from infra.stack import LocalStack
from producers.api import Producer
from tests.integration.conftest import Buckets, Sim, put, wait_state
from tests.support import png
from worker import metrics
from worker.app import build_worker
from worker.keys import Keys
from worker.settings import Settings

OUTAGE_S = 30 * 60
LINK_TTL_S = 10 * 60  # shorter than the outage: the link the job holds expires during it


@pytest.fixture
async def worker_running(settings: Settings) -> AsyncIterator[None]:
    worker = build_worker(settings, burst=False, handle_signals=False, poll_delay=0.05)
    task = asyncio.create_task(worker.async_run())
    yield
    task.cancel()
    await worker.close()


async def _paid_and_stuck(stack: LocalStack, producer: Producer, job_id: str) -> str:
    """S3 goes away once the upstream job is accepted; returns the result link the ledger
    saved when the job completed (storing it then waits for S3)."""
    async with asyncio.timeout(30):
        while not await producer.redis.exists(Keys.paid(job_id)):  # the async job's id
            await asyncio.sleep(0.02)
    stack.stop_s3()
    async with asyncio.timeout(60):
        while True:
            paid = json.loads(await producer.redis.get(Keys.paid(job_id)) or "{}")
            if paid.get("outputs"):
                break
            await asyncio.sleep(0.05)
    await wait_state(producer, job_id, "waiting", timeout=30)
    out = paid["outputs"][0]
    assert out["upstream_job"] and out["url"]
    return str(out["url"])


async def test_a_link_expired_in_an_outage_is_signed_anew_without_a_second_call(
    stack: LocalStack,
    sim: Sim,
    producer: Producer,
    buckets: Buckets,
    worker_running: None,
) -> None:
    sim.configure(async_mode=True, latency_ms=[1000, 1000], result_url_ttl_s=LINK_TTL_S)
    put(stack, buckets.src, "a.png", png(24, 24))
    job_id = (await producer.enqueue(f"s3://{buckets.src}/a.png")).job_id
    refreshed = metrics.RESULT_LINKS_REFRESHED._value.get()
    try:
        await _paid_and_stuck(stack, producer, job_id)
        sim.http.post("/_admin/clock", json={"advance_s": OUTAGE_S}).raise_for_status()
    finally:
        stack.start_s3()
    rec = await wait_state(producer, job_id, "succeeded", "failed", timeout=90)
    assert rec.state == "succeeded", rec.error
    stats = sim.stats()
    assert stats["calls"] == 1 and stats["billed_calls"] == 1
    assert rec.billed_calls == 1 and rec.calls == 1
    assert metrics.RESULT_LINKS_REFRESHED._value.get() == refreshed + 1  # the link had expired
    assert not await producer.redis.exists(Keys.paid(job_id))


async def test_a_result_gone_upstream_is_bought_again(
    stack: LocalStack,
    sim: Sim,
    producer: Producer,
    buckets: Buckets,
    worker_running: None,
) -> None:
    sim.configure(async_mode=True, latency_ms=[1000, 1000])
    put(stack, buckets.src, "b.png", png(24, 24))
    job_id = (await producer.enqueue(f"s3://{buckets.src}/b.png")).job_id
    try:
        await _paid_and_stuck(stack, producer, job_id)
        # past the link (24 h) and the file's retention (7 days): the job answers 404
        sim.http.post("/_admin/clock", json={"advance_s": 8 * 86_400}).raise_for_status()
    finally:
        stack.start_s3()
    rec = await wait_state(producer, job_id, "succeeded", "failed", timeout=90)
    assert rec.state == "succeeded", rec.error
    assert sim.stats()["billed_calls"] == 2 and rec.billed_calls == 2
