"""The output write is conditional on what the run saw at the destination (S3 conditional
writes: `If-None-Match: *` / `If-Match`), so a writer that was overtaken replaces nothing: a
stalled run of the same job, or a job whose destination another job wrote meanwhile."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from infra.stack import LocalStack
from producers.api import Producer
from tests.integration.conftest import Buckets, Sim, drain, put
from tests.support import png
from worker.contract import META_JOB_ID, S3Object
from worker.keys import Keys
from worker.settings import Settings
from worker.storage import DestinationChanged, Storage


async def _chunks(data: bytes):  # type: ignore[no-untyped-def]
    yield data


def _describe(_first: bytes) -> tuple[str, dict[str, str]]:
    return "image/png", {META_JOB_ID: "uq-writer"}


async def test_an_overtaken_writer_replaces_nothing(
    stack: LocalStack, settings: Settings, buckets: Buckets
) -> None:
    storage = Storage(settings.s3)
    dest = S3Object(bucket=buckets.dest, key="out.png")
    first = await storage.upload_stream(dest, _chunks(b"new"), describe=_describe, expect=None)
    # a writer that saw nothing there, and one that saw an older object: both were overtaken
    with pytest.raises(DestinationChanged):
        await storage.upload_stream(dest, _chunks(b"stale"), describe=_describe, expect=None)
    with pytest.raises(DestinationChanged):
        await storage.upload_stream(dest, _chunks(b"stale"), describe=_describe, expect="0" * 32)
    body = stack.s3_client().get_object(Bucket=buckets.dest, Key="out.png")["Body"].read()
    assert body == b"new"
    # what it saw is what is there: it writes
    await storage.upload_stream(dest, _chunks(b"next"), describe=_describe, expect=first.etag)


async def test_a_destination_written_during_the_call_is_not_overwritten(
    stack: LocalStack,
    sim: Sim,
    settings: Settings,
    producer: Producer,
    buckets: Buckets,
    redis: Redis,
) -> None:
    put(stack, buckets.src, "a.png", png(40, 30))
    sim.configure(latency_ms=[1500, 1500])
    job = await producer.enqueue(f"s3://{buckets.src}/a.png")
    worker = asyncio.create_task(drain(settings))
    async with asyncio.timeout(30):  # the call is journaled: the run looked at the destination
        while not await redis.exists(Keys.call(job.job_id)):
            await asyncio.sleep(0.02)
    # another writer (a newer version's job, a person) stores there while the call runs
    s3 = stack.s3_client()
    s3.put_object(Bucket=buckets.dest, Key="a@2x.png", Body=b"theirs", Metadata={"x": "1"})
    await worker
    sim.configure(latency_ms=[0, 0])
    rec = await producer.status(job.job_id)
    assert rec is not None and rec.state == "skipped", rec
    assert "written by another job" in (rec.note or "")
    assert s3.get_object(Bucket=buckets.dest, Key="a@2x.png")["Body"].read() == b"theirs"
    assert sim.stats()["billed_calls"] == 1 and rec.cost_usd > 0  # paid, counted, not written
