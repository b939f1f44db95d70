"""The output reflects the newest version of its source: versioned buckets with events out of
order, objects replaced under the same key, deleted sources (SeaweedFS S3 with versioning, a
real worker, the simulator's bill)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from infra.stack import LocalStack
from producers.api import Producer, SourceNotFound
from producers.intake import enqueue_notification
from tests.integration.conftest import Buckets, Sim, drain, put
from tests.support import png, stored_output
from worker.contract import JobState
from worker.keys import Keys
from worker.settings import Settings

V1, V2 = png(40, 30), png(50, 30)  # their 2x upscales: 80x60 and 100x60


def versioned(stack: LocalStack, bucket: str) -> Any:
    s3 = stack.s3_client()
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return s3


def created(bucket: str, key: str, put_reply: dict[str, Any], sequencer: str) -> dict[str, Any]:
    """An S3 ObjectCreated:Put notification as AWS sends it (version id, ETag, sequencer)."""
    obj = {
        "key": key,
        "size": 1,
        "eTag": str(put_reply["ETag"]).strip('"'),
        "versionId": put_reply["VersionId"],
        "sequencer": sequencer,
    }
    rec = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": obj}}
    return {"Records": [rec]}


async def test_a_late_event_for_an_older_version_is_superseded_without_a_call(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    s3 = versioned(stack, buckets.src)
    v1 = s3.put_object(Bucket=buckets.src, Key="k.png", Body=V1)
    v2 = s3.put_object(Bucket=buckets.src, Key="k.png", Body=V2)
    assert v1["VersionId"] != v2["VersionId"]
    # Standard SQS does not keep order: v2's event arrives (and runs) first, v1's after.
    new = await enqueue_notification(producer, created(buckets.src, "k.png", v2, "0B"))
    old = await enqueue_notification(producer, created(buckets.src, "k.png", v1, "0A"))
    (new_id,), (old_id,) = new.enqueued, old.enqueued
    await drain(settings)

    rec = await producer.status(new_id)
    assert rec is not None and rec.state == "succeeded", rec
    late = await producer.status(old_id)
    assert late is not None and late.state == "skipped", late
    assert (late.note or "").startswith("superseded: the source has a newer version")
    assert late.billed_calls == 0
    assert sim.stats()["billed_calls"] == 1
    assert stored_output(s3, rec.dest or "").resolution == "100x60"
    bucket, _, key = (rec.dest or "").removeprefix("s3://").partition("/")
    meta = s3.head_object(Bucket=bucket, Key=key)["Metadata"]
    assert meta["upscale-source-version"] == v2["VersionId"]


async def test_a_version_replaced_during_the_call_does_not_overwrite_the_newer_output(
    stack: LocalStack,
    sim: Sim,
    settings: Settings,
    producer: Producer,
    buckets: Buckets,
    redis: Redis,
) -> None:
    """v1's job reads v1 (then current), calls; v2 is uploaded while the call runs: the check
    right before the upload stops v1's result from landing over what v2's job stores."""
    s3 = versioned(stack, buckets.src)
    s3.put_object(Bucket=buckets.src, Key="k.png", Body=V1)
    sim.configure(latency_ms=[1500, 1500])
    old = await producer.enqueue(f"s3://{buckets.src}/k.png")  # pinned to v1 (a HEAD)
    worker = asyncio.create_task(drain(settings))
    async with asyncio.timeout(30):  # v1's call is journaled: its read of v1 is behind it
        while not await redis.exists(Keys.call(old.job_id)):
            await asyncio.sleep(0.02)
    s3.put_object(Bucket=buckets.src, Key="k.png", Body=V2)
    await worker
    sim.configure(latency_ms=[0, 0])
    late = await producer.status(old.job_id)
    assert late is not None and late.state == "skipped", late
    assert (late.note or "").startswith("superseded after its call")
    assert sim.stats()["billed_calls"] == 1  # paid, and not stored over a newer version
    assert "Contents" not in s3.list_objects_v2(Bucket=buckets.dest)

    new = await producer.enqueue(f"s3://{buckets.src}/k.png")  # v2: a new job
    assert new.outcome == "created" and new.job_id != old.job_id
    await drain(settings)
    rec = await producer.status(new.job_id)
    assert rec is not None and rec.state == "succeeded", rec
    assert stored_output(s3, rec.dest or "").resolution == "100x60"
    assert sim.stats()["billed_calls"] == 2


async def test_an_object_replaced_under_the_same_key_is_a_new_job(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    """Enqueue reads the ETag (no etag given): the same key with new content is a new job."""
    put(stack, buckets.src, "x.png", V1)
    first = await producer.enqueue(f"s3://{buckets.src}/x.png")
    assert (await producer.enqueue(f"s3://{buckets.src}/x.png")).outcome == "duplicate"
    await drain(settings)
    put(stack, buckets.src, "x.png", V2)
    second = await producer.enqueue(f"s3://{buckets.src}/x.png")
    assert second.outcome == "created" and second.job_id != first.job_id
    await drain(settings)
    rec = await producer.status(second.job_id)
    assert rec is not None and rec.state == "succeeded", rec
    assert stored_output(stack.s3_client(), rec.dest or "").resolution == "100x60"
    assert sim.stats()["billed_calls"] == 2

    with pytest.raises(SourceNotFound, match=f"^no such object s3://{buckets.src}/nope.png$"):
        await producer.enqueue(f"s3://{buckets.src}/nope.png")


async def test_deleted_and_overwritten_sources_end_skipped_not_failed(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    for key in ("gone.png", "replaced.png", "kept.png"):
        put(stack, buckets.src, key, V1)
    ids = {
        k: (await producer.enqueue(f"s3://{buckets.src}/{k}", batch="life")).job_id
        for k in ("gone.png", "replaced.png", "kept.png")
    }
    stack.s3_client().delete_object(Bucket=buckets.src, Key="gone.png")
    put(stack, buckets.src, "replaced.png", V2)
    await drain(settings)

    gone, replaced, kept = [await producer.status(j) for j in ids.values()]
    assert gone is not None and gone.state == "skipped", gone
    assert (gone.note or "").startswith(f"source deleted: s3://{buckets.src}/gone.png")
    assert replaced is not None and replaced.state == "skipped", replaced
    assert (replaced.note or "").startswith("superseded: the source was replaced")
    assert kept is not None and kept.state == "succeeded"
    assert sim.stats()["billed_calls"] == 1
    status = await producer.fleet_status()  # what `upscale status` shows
    assert status.states.get(JobState.FAILED, 0) == 0 and status.states[JobState.SKIPPED] == 2
    summary = await producer.batch_summary("life")
    assert summary.states.get(JobState.FAILED, 0) == 0
