"""A lost ledger (FLUSHALL: a Redis rebuilt empty, a bad restore) and the same sources
enqueued again: every output already stored carries its job's id, whatever extension the output
policy gave it, so every job ends `skipped` without a call. Real worker process, default
settings; judged by the simulator's bill and S3."""

from __future__ import annotations

import io
from collections import Counter

import pytest
from PIL import Image
from redis.asyncio import Redis

from infra.stack import LocalStack
from producers.api import Producer, build_spec
from tests.integration.conftest import Buckets, Sim, WorkerProcs, put, wait_state
from worker.settings import Settings

pytestmark = pytest.mark.slow


def _image(fmt: str, shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 20), (shade, 255 - shade, 90)).save(buf, fmt)
    return buf.getvalue()


# source key -> the bytes' format: every format the output policy keeps, and keys whose
# extension is wrong or missing (their outputs are stored under another extension than asked)
SOURCES = {
    "a.png": "PNG",
    "b.jpg": "JPEG",
    "c.webp": "WEBP",
    "d.gif": "GIF",
    "e.bmp": "BMP",
    "f.tif": "TIFF",
    "g.jpg": "PNG",  # asked g@2x.jpg, stored g@2x.png
    "h": "JPEG",  # asked h@2x.png (no extension: png), stored h@2x.jpg
    "i.png": "JPEG",  # asked i@2x.png, stored i@2x.jpg
    "j.jpeg": "JPEG",
}


async def test_a_lost_ledger_buys_nothing_again(
    stack: LocalStack,
    sim: Sim,
    redis: Redis,
    producer: Producer,
    buckets: Buckets,
    workers: WorkerProcs,
) -> None:
    for n, (key, fmt) in enumerate(SOURCES.items()):
        put(stack, buckets.src, key, _image(fmt, 20 * n))
    workers.start(1, log_level="WARNING")
    ids = [(await producer.enqueue(f"s3://{buckets.src}/{k}")).job_id for k in SOURCES]
    first = [await wait_state(producer, j, "succeeded", "failed", timeout=60) for j in ids]
    assert [r.state for r in first] == ["succeeded"] * len(ids), [r.error for r in first]
    stored = {r.dest.rsplit("/", 1)[1] for r in first}
    assert {"g@2x.png", "h@2x.jpg", "i@2x.jpg"} <= stored  # another extension than asked
    billed = sim.stats()["billed_calls"]
    assert billed == len(ids)

    await redis.flushall()  # the ledger is gone; the outputs are not
    again = [(await producer.enqueue(f"s3://{buckets.src}/{k}")).job_id for k in SOURCES]
    assert again == ids
    second = [await wait_state(producer, j, "skipped", "succeeded", "failed") for j in ids]

    stats = sim.stats()
    assert stats["billed_calls"] == billed, "an image was bought again"
    assert max(Counter(b["image_sha"] for b in stats["bills"]).values()) == 1
    assert [r.state for r in second] == ["skipped"] * len(ids), [r.note for r in second]
    assert [r.dest for r in second] == [r.dest for r in first], "found where it was stored"
    listed = stack.s3_client().list_objects_v2(Bucket=buckets.dest).get("Contents", [])
    assert len(listed) == len(ids), "one output per job, none written again"


async def test_a_listed_destination_is_not_asked_again(
    stack: LocalStack,
    sim: Sim,
    redis: Redis,
    settings: Settings,
    producer: Producer,
    buckets: Buckets,
    workers: WorkerProcs,
) -> None:
    """`dest_listed`: a backfill listed the destination prefix just before enqueue and found
    no output, so the worker asks S3 nothing: here an output is there (the listing's word is
    taken), and the job calls."""
    put(stack, buckets.src, "k.png", _image("PNG", 7))
    workers.start(1, log_level="WARNING")
    source = f"s3://{buckets.src}/k.png"
    job_id = (await producer.enqueue(source)).job_id
    assert (await wait_state(producer, job_id, "succeeded", "failed", timeout=60)).state == (
        "succeeded"
    )
    await redis.flushall()
    spec = build_spec(source, settings=settings).model_copy(update={"dest_listed": True})
    assert (await producer.enqueue_specs([spec]))[0].job_id == job_id
    rec = await wait_state(producer, job_id, "succeeded", "skipped", "failed", timeout=60)
    assert rec.state == "succeeded" and rec.billed_calls == 1
    assert sim.stats()["billed_calls"] == 2
