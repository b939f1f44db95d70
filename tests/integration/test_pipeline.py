"""End to end on real parts: Redis, SeaweedFS S3, the simulator over HTTP, an arq worker."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image
from redis.asyncio import Redis

from infra.stack import LocalStack
from producers.api import Producer
from tests.integration.conftest import Buckets, Sim, drain, put, wait_state
from tests.support import png, stored_output
from worker.app import build_worker
from worker.settings import Settings


async def _enqueue(producer: Producer, buckets: Buckets, key: str, **kw: object) -> str:
    r = await producer.enqueue(f"s3://{buckets.src}/{key}", batch="b1", **kw)
    assert r.outcome == "created"
    return r.job_id


async def test_happy_path_output_ledger_and_spend(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    key = "dir/my photo+1 é.png"
    etag = put(stack, buckets.src, key, png(64, 48))
    job_id = await _enqueue(producer, buckets, key, prompt="sharper", seed=7, etag=etag)
    await drain(settings)

    rec = await producer.status(job_id)
    assert rec is not None and rec.state == "succeeded", rec
    # a final record keeps what the batch's report shows (the output's metadata has the rest)
    assert rec.cost_usd == pytest.approx(0.06)
    assert rec.dest == f"s3://{buckets.dest}/dir/my photo+1 é@2x.png"

    s3 = stack.s3_client()
    obj = s3.get_object(Bucket=buckets.dest, Key="dir/my photo+1 é@2x.png")
    img = Image.open(io.BytesIO(obj["Body"].read()))
    assert img.size == (128, 96)
    meta = obj["Metadata"]
    assert meta["upscale-job-id"] == job_id
    assert meta["upscale-source-etag"] == etag
    assert meta["upscale-model"] == "ideogram/ideogram-upscale"
    assert meta["upscale-cost-usd"] == "0.0600"
    assert meta["upscale-resolution"] == "128x96"
    assert meta["upscale-request-id"].startswith("req_")
    assert "upscale-source" in meta and "upscale-prompt-hash" in meta

    spend = await producer.ledger.spend()
    assert spend["total_usd"] == pytest.approx(0.06) and spend["today_usd"] == pytest.approx(0.06)
    batch = await producer.ledger.batch_summary("b1")
    assert batch["total"] == 1 and batch["states"].get("succeeded") == 1
    assert batch["spend_usd"] == pytest.approx(0.06)
    assert sim.stats()["billed_calls"] == 1


@pytest.mark.parametrize("mode", ["data_url", "edits"])
async def test_bytes_modes_and_b64_results(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets, mode: str
) -> None:
    settings = settings.model_copy(update={"image_mode": mode, "response_format": "b64_json"})
    put(stack, buckets.src, "a.jpg", png(40, 30, "JPEG"))
    job_id = await _enqueue(producer, buckets, "a.jpg")
    await drain(settings)
    rec = await producer.status(job_id)
    assert rec is not None and rec.state == "succeeded", rec
    assert stored_output(stack.s3_client(), rec.dest).resolution == "80x60"


async def test_dedup_same_object_and_params_is_one_job(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    put(stack, buckets.src, "x.png", png())
    first = await producer.enqueue(f"s3://{buckets.src}/x.png")
    again = await producer.enqueue(f"s3://{buckets.src}/x.png")
    # other parameters are another job; its own destination (two jobs writing one key race: the
    # output write is conditional, so the one that started first and stored later is skipped)
    other = await producer.enqueue(
        f"s3://{buckets.src}/x.png", prompt="different", dest=f"s3://{buckets.dest}/x-prompted.png"
    )
    assert first.job_id == again.job_id and again.outcome == "duplicate"
    assert other.job_id != first.job_id
    await drain(settings)
    after = await producer.enqueue(f"s3://{buckets.src}/x.png")
    assert after.outcome == "duplicate" and after.state == "succeeded"
    await drain(settings)
    assert sim.stats()["billed_calls"] == 2  # x.png once, the prompted variant once


@pytest.mark.parametrize(
    ("status", "error_class"), [(400, "InvalidRequest"), (404, "ModelNotFound")]
)
async def test_permanent_errors_fail_without_retry(
    stack: LocalStack,
    sim: Sim,
    settings: Settings,
    producer: Producer,
    buckets: Buckets,
    status: int,
    error_class: str,
) -> None:
    put(stack, buckets.src, "p.png", png())
    sim.configure(fail_next=[status])
    job_id = await _enqueue(producer, buckets, "p.png")
    await drain(settings)
    rec = await producer.status(job_id)
    assert rec is not None and rec.state == "failed"
    assert rec.error_class == error_class and f"HTTP {status}" in (rec.error or "")
    assert rec.calls == 1 and rec.billed_calls == 0 and rec.cost_usd == 0
    assert sim.stats()["calls"] == 1


async def test_server_errors_back_off_then_succeed(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    put(stack, buckets.src, "t.png", png())
    sim.configure(fail_next=[500, 503])
    job_id = await _enqueue(producer, buckets, "t.png")
    await drain(settings)
    rec = await producer.status(job_id)
    assert rec is not None and rec.state == "succeeded"
    assert rec.attempts == 2 and rec.calls == 3 and rec.billed_calls == 1


async def test_server_errors_fail_after_max_attempts(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    put(stack, buckets.src, "t.png", png())
    sim.configure(fail_next=[500, 503, 500, 500])
    job_id = await _enqueue(producer, buckets, "t.png")
    await drain(settings.model_copy(update={"circuit_threshold": 100}))
    rec = await producer.status(job_id)
    assert rec is not None and rec.state == "failed"
    assert rec.attempts == 3 and rec.calls == 3 and "gave up after 3 attempts" in (rec.error or "")
    assert sim.stats()["calls"] == 3


async def test_429_waits_for_retry_after_without_using_an_attempt(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    put(stack, buckets.src, "r.png", png())
    sim.configure(fail_next=[429], fail_next_retry_after=1, error_body_style="string")
    job_id = await _enqueue(producer, buckets, "r.png")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await drain(settings)
    rec = await producer.status(job_id)
    assert rec is not None and rec.state == "succeeded"
    assert rec.attempts == 0 and rec.calls == 2
    assert loop.time() - t0 >= 1.0  # Retry-After honoured
    log = [c for c in sim.stats()["log"] if c["path"].startswith("/v1/")]
    assert log[1]["t"] - log[0]["t"] >= 1.0


async def test_402_pauses_everything_and_resume_finishes(
    stack: LocalStack,
    sim: Sim,
    settings: Settings,
    producer: Producer,
    buckets: Buckets,
    redis: Redis,
) -> None:
    for i in range(4):
        put(stack, buckets.src, f"k{i}.png", png(32 + i, 32))
    sim.wallet(set=0.06)  # enough for exactly one image
    settings = settings.model_copy(update={"max_inflight": 1})
    ids = [await _enqueue(producer, buckets, f"k{i}.png") for i in range(4)]
    worker = build_worker(settings, burst=True, handle_signals=False, poll_delay=0.05)
    task = asyncio.create_task(worker.async_run())
    try:
        # One job is paid for, the next call hits 402 and pauses the fleet.
        while (await producer.flow.pause_info()) is None:
            await asyncio.sleep(0.05)
        info = await producer.flow.pause_info()
        assert info is not None and info.reason == "credits"
        waiting = [await wait_state(producer, j, "waiting", "succeeded") for j in ids]
        assert sum(r.state == "succeeded" for r in waiting) == 1
        calls_at_pause = sim.stats()["calls"]
        assert calls_at_pause == 2  # the paid one + the single 402: no call into an empty wallet
        # Paused: let the worker spin for a while; the simulator must see nothing.
        await asyncio.sleep(1.0)
        assert sim.stats()["calls"] == calls_at_pause
        status = await producer.status(ids[1])
        assert status is not None
        for j in ids:
            rec = await producer.status(j)
            assert rec is not None and rec.attempts == 0 and rec.state in ("waiting", "succeeded")
        sim.wallet(add=1.0)
        assert await producer.flow.resume()
        await asyncio.wait_for(task, 30)
    finally:
        if not task.done():
            task.cancel()
        await worker.close()
    for j in ids:
        rec = await producer.status(j)
        assert rec is not None and rec.state == "succeeded"
    stats = sim.stats()
    assert stats["billed_calls"] == 4 and stats["by_status"].get("402") == 1


async def test_bad_inputs_fail_without_an_upstream_call(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    put(stack, buckets.src, "empty.png", b"")
    put(stack, buckets.src, "text.png", b"this is not an image at all" * 10)
    put(stack, buckets.src, "trunc.png", png(200, 200)[:300])
    put(stack, buckets.src, "missing.png", png())
    ids = {k: await _enqueue(producer, buckets, k) for k in ("empty.png", "text.png", "trunc.png")}
    missing = await _enqueue(producer, buckets, "missing.png")
    stack.s3_client().delete_object(Bucket=buckets.src, Key="missing.png")
    await drain(settings)
    for key, job_id in ids.items():
        rec = await producer.status(job_id)
        assert rec is not None and rec.state == "failed", key
        assert rec.error_class == "InvalidImage" and rec.error, key
    # deleted after enqueue (enqueue refuses a missing one): normal S3 life, not a failure
    rec = await producer.status(missing)
    assert rec is not None and rec.state == "skipped" and "does not exist" in (rec.note or "")
    assert sim.stats()["calls"] == 0
