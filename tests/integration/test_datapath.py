"""The data path: never pay twice, any input format and size, both upstream routes."""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import signal

import pytest
from PIL import Image

from infra.stack import LocalStack
from producers.api import Producer
from tests.integration.conftest import FAST, Buckets, Sim, WorkerProcs, drain, put, wait_state
from tests.support import png, stored_output
from worker.contract import STAGING_PREFIX, Keys
from worker.settings import Settings


async def _job(producer: Producer, buckets: Buckets, key: str) -> str:
    return (await producer.enqueue(f"s3://{buckets.src}/{key}")).job_id


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(w: int, h: int) -> Image.Image:
    return Image.frombytes("RGB", (w, h), os.urandom(w * h * 3))


def _output(stack: LocalStack, bucket: str, key: str) -> tuple[Image.Image, str]:
    obj = stack.s3_client().get_object(Bucket=bucket, Key=key)
    return Image.open(io.BytesIO(obj["Body"].read())), obj["ContentType"]


# -- any input --------------------------------------------------------------------------------


@pytest.mark.parametrize("image_mode", ["url", "edits"])
async def test_other_formats_go_as_png_and_are_stored_in_their_own(
    stack: LocalStack,
    sim: Sim,
    settings: Settings,
    producer: Producer,
    buckets: Buckets,
    image_mode: str,
) -> None:
    img = Image.new("RGB", (30, 20), (10, 200, 10))
    put(stack, buckets.src, "scan.tiff", _encode(img, "TIFF"))
    put(stack, buckets.src, "icon.bmp", _encode(img, "BMP"))
    frames = [Image.new("P", (30, 20), i) for i in (1, 2)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    put(stack, buckets.src, "anim.gif", gif.getvalue())
    ids = [await _job(producer, buckets, k) for k in ("scan.tiff", "icon.bmp", "anim.gif")]
    await drain(settings.model_copy(update={"image_mode": image_mode}))
    for job_id, key, fmt in zip(
        ids, ("scan@2x.tiff", "icon@2x.bmp", "anim@2x.gif"), ("TIFF", "BMP", "GIF"), strict=True
    ):
        rec = await wait_state(producer, job_id, "succeeded", "failed")
        assert rec.state == "succeeded", rec.error
        ctype = f"image/{fmt.lower()}"
        out = stored_output(stack.s3_client(), rec.dest)
        assert out.resolution == "60x40" and out.content_type == ctype
        img, stored_ctype = _output(stack, buckets.dest, key)  # UPSCALE_OUTPUT_FORMAT=source
        assert img.format == fmt and stored_ctype == ctype and img.size == (60, 40)
    assert sim.stats()["billed_calls"] == 3
    # staged copies (url mode) are cleaned up after the call
    listed = stack.s3_client().list_objects_v2(Bucket=buckets.dest, Prefix=STAGING_PREFIX)
    assert listed.get("KeyCount", 0) == 0


async def test_exif_orientation_is_applied(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    put(stack, buckets.src, "phone.jpg", _encode(Image.new("RGB", (40, 20)), "JPEG", exif=exif))
    job_id = await _job(producer, buckets, "phone.jpg")
    await drain(settings)
    rec = await wait_state(producer, job_id, "succeeded", "failed")
    assert rec.state == "succeeded"
    assert stored_output(stack.s3_client(), rec.dest).resolution == "40x80"


async def test_oversize_input_is_reencoded_or_fails_when_switched_off(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    # Noise does not compress losslessly: only the JPEG steps fit under the cap.
    put(stack, buckets.src, "big.png", _encode(_noise(160, 120), "PNG"))
    job_id = await _job(producer, buckets, "big.png")
    small = {"max_input_bytes": 40_000}
    await drain(settings.model_copy(update=small))
    rec = await wait_state(producer, job_id, "succeeded", "failed")
    assert rec.state == "succeeded", rec.error
    note = await producer.redis.hget(Keys.job(job_id), "input_note")  # type: ignore[misc]  # redis-py's async stubs
    assert note and b"re-encoded as JPEG" in note
    assert sim.stats()["billed_calls"] == 1

    put(stack, buckets.src, "big2.png", _encode(_noise(160, 120), "PNG"))
    job_id = await _job(producer, buckets, "big2.png")
    await drain(settings.model_copy(update={**small, "reencode_oversize": False}))
    rec = await wait_state(producer, job_id, "failed")
    assert rec.error_class == "InputTooLarge" and "re-encoding to fit is off" in (rec.error or "")
    assert sim.stats()["billed_calls"] == 1  # no call for the failed one


async def test_decompression_bomb_fails_without_a_call(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    put(stack, buckets.src, "bomb.png", _encode(Image.new("1", (12_000, 12_000)), "PNG"))
    job_id = await _job(producer, buckets, "bomb.png")
    await drain(settings)
    rec = await wait_state(producer, job_id, "failed")
    assert rec.error_class == "InvalidImage" and "pixel" in (rec.error or "")
    assert sim.stats()["calls"] == 0


# -- never pay twice --------------------------------------------------------------------------


async def test_truncated_download_is_retried_without_a_new_call(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    sim.configure(truncate_next_downloads=2)
    put(stack, buckets.src, "a.png", png(50, 40))
    job_id = await _job(producer, buckets, "a.png")
    await drain(settings)
    rec = await wait_state(producer, job_id, "succeeded", "failed")
    assert rec.state == "succeeded" and rec.billed_calls == 1
    img, ctype = _output(stack, buckets.dest, "a@2x.png")
    assert img.size == (100, 80) and ctype == "image/png"
    img.load()
    assert sim.stats()["billed_calls"] == 1


async def test_worker_killed_after_payment_resumes_without_paying_again(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    sim.configure(download_delay_ms=20_000)  # the result download hangs: kill during it
    put(stack, buckets.src, "paid.png", png(40, 40))
    job_id = await _job(producer, buckets, "paid.png")
    (victim,) = workers.start(1, **FAST)
    async with asyncio.timeout(30):
        while not await producer.redis.exists(Keys.paid(job_id)):
            await asyncio.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(5)
    sim.configure(download_delay_ms=0)
    workers.start(1, **FAST)
    # the dead run's lease expires (20 s) and a live worker reclaims it
    rec = await wait_state(producer, job_id, "succeeded", "failed", timeout=45)
    assert rec.state == "succeeded"
    assert rec.billed_calls == 1 and rec.calls == 1
    assert sim.stats()["billed_calls"] == 1
    assert not await producer.redis.exists(Keys.paid(job_id))


async def test_b64_result_survives_an_s3_outage(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    put(stack, buckets.src, "b.png", png(30, 30))
    job_id = await _job(producer, buckets, "b.png")
    s = settings.model_copy(update={"response_format": "b64_json", "image_mode": "data_url"})
    from worker.app import build_worker

    worker = build_worker(s, burst=False, handle_signals=False, poll_delay=0.05)
    task = asyncio.create_task(worker.async_run())
    try:
        async with asyncio.timeout(30):
            while not await producer.redis.exists(Keys.paid(job_id)):
                await asyncio.sleep(0.01)
        stack.stop_s3()  # S3 goes away right after the call was paid
        try:
            rec = await wait_state(producer, job_id, "waiting", "succeeded", timeout=30)
        finally:
            stack.start_s3()
        rec = await wait_state(producer, job_id, "succeeded", "failed", timeout=60)
        assert rec.state == "succeeded" and rec.billed_calls == 1
    finally:
        task.cancel()
        await worker.close()
    assert sim.stats()["billed_calls"] == 1


# -- both routes ------------------------------------------------------------------------------


async def test_route_2_direct_api_and_unsafe_result(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    direct = settings.model_copy(
        update={"route": "ideogram", "ideogram_url": f"{stack.simulator_url}/upscale"}
    )
    put(stack, buckets.src, "ok.png", png(32, 16))
    ok = await _job(producer, buckets, "ok.png")
    await drain(direct)
    rec = await wait_state(producer, ok, "succeeded", "failed")
    assert rec.state == "succeeded", rec.error
    assert stored_output(stack.s3_client(), rec.dest).resolution == "64x32"

    sim.configure(unsafe_rate=1.0)
    put(stack, buckets.src, "flagged.png", png(32, 16))
    bad = await _job(producer, buckets, "flagged.png")
    await drain(direct)
    rec = await wait_state(producer, bad, "failed")
    assert rec.error_class == "UnsafeContent" and "safety" in (rec.error or "")
    assert rec.billed_calls == 1 and rec.attempts == 0  # billed, and not retried
    assert sim.stats()["billed_calls"] == 2


async def test_route_1_async_mode_resumes_the_pending_job_after_a_sigkill(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    # Default settings: the worker that submitted the async (202) job is SIGKILLed while it
    # polls; the run is reclaimed and the next run keeps polling the saved upstream job id.
    sim.configure(async_mode=True, latency_ms=[8000, 8000], async_min_poll_s=3.0)
    put(stack, buckets.src, "slow.png", png(20, 20))
    job_id = await _job(producer, buckets, "slow.png")
    (victim,) = workers.start(1, log_level="WARNING")
    async with asyncio.timeout(30):
        while not await producer.redis.exists(Keys.paid(job_id)):  # the pending id is saved
            await asyncio.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(5)
    workers.start(1, log_level="WARNING")
    rec = await wait_state(producer, job_id, "succeeded", "failed", timeout=60)
    assert rec.state == "succeeded", rec.error
    assert rec.reclaims == 1 and rec.billed_calls == 1 and rec.spend_usd == 0.06
    stats = sim.stats()
    submits = [c for c in stats["log"] if c["path"] == "/v1/images/generations"]
    assert len(submits) == 1 and stats["billed_calls"] == 1
    polls = sorted(c["t"] for c in stats["log"] if c["path"].startswith("/v1/jobs/"))
    assert all(b - a >= 2.9 for a, b in itertools.pairwise(polls))


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.slow
async def test_a_100mb_result_streams_in_constant_memory(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    # A flat 2900x2900 input with detail=100: the simulator's grain makes a ~100 MB PNG.
    put(stack, buckets.src, "warm.png", png(64, 64))
    put(
        stack, buckets.src, "huge.png", _encode(Image.new("RGB", (2900, 2900), (90, 60, 30)), "PNG")
    )
    # As in the Dockerfile: few malloc arenas, so memory freed by worker threads is reused.
    (proc,) = workers.start(1, MALLOC_ARENA_MAX=2, **FAST)
    warm = (await producer.enqueue(f"s3://{buckets.src}/warm.png", detail=100)).job_id
    await wait_state(producer, warm, "succeeded", timeout=60)  # imports and pools warmed up
    baseline = _rss_kb(proc.pid)
    job_id = (await producer.enqueue(f"s3://{buckets.src}/huge.png", detail=100)).job_id
    peak = baseline
    async with asyncio.timeout(120):
        while (rec := await producer.status(job_id)) is None or not rec.final:
            peak = max(peak, _rss_kb(proc.pid))
            await asyncio.sleep(0.02)
    assert rec.state == "succeeded", rec.error
    out = stored_output(stack.s3_client(), rec.dest)
    assert out.size > 90_000_000 and out.resolution == "5800x5800"
    growth_mb = (peak - baseline) / 1024
    print(f"100 MB result: worker RSS {baseline / 1024:.0f} MB -> peak {peak / 1024:.0f} MB")
    # the source (2900x2900, decoded once to validate it: ~25 MB) plus one 8 MB upload part and
    # download buffers; the 100 MB result itself never sits in memory
    assert growth_mb < 64, f"worker RSS grew by {growth_mb:.0f} MB"
    head = stack.s3_client().head_object(Bucket=buckets.dest, Key="huge@2x.png")
    assert head["ContentLength"] == out.size and head["ContentType"] == "image/png"
