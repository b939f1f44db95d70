"""The Lambda handler end to end: SQS records (a malformed one acknowledged) and S3 Batch
Operations tasks (per-task result codes; our own outputs skipped)."""

from __future__ import annotations

from urllib.parse import quote_plus

import pytest

from producers.api import Producer, build_spec
from producers.lambda_handler import handle
from tests.integration.conftest import Buckets, job_ids
from tests.support import s3_event
from worker.contract import BULK_QUEUE_NAME
from worker.settings import get_settings


async def test_lambda_handler_sqs_and_batch_operations(
    stack_env: None, producer: Producer, buckets: Buckets
) -> None:
    sqs_event = {
        "Records": [
            {"messageId": "m1", "eventSource": "aws:sqs", "body": s3_event(buckets.src, "l 1.png")},
            {"messageId": "m2", "eventSource": "aws:sqs", "body": "garbage"},
        ]
    }
    assert await handle(sqs_event) == {"batchItemFailures": []}  # malformed: acknowledged
    ops = {
        "invocationSchemaVersion": "1.0",
        "invocationId": "inv-1",
        "job": {"id": "job-1"},
        "tasks": [
            {
                "taskId": "t1",
                "s3Key": quote_plus("dir/photo 2.png").replace("+", "%20"),
                "s3VersionId": None,
                "s3BucketArn": f"arn:aws:s3:::{buckets.src}",
            },
            {
                "taskId": "t2",
                "s3Key": "dir/photo@2x.png",
                "s3VersionId": None,
                "s3BucketArn": f"arn:aws:s3:::{buckets.src}",
            },
        ],
    }
    out = await handle(ops)
    by_task = {r["taskId"]: r for r in out["results"]}
    assert by_task["t1"]["resultCode"] == "Succeeded" and "created" in by_task["t1"]["resultString"]
    assert by_task["t2"]["resultCode"] == "Succeeded" and "skipped" in by_task["t2"]["resultString"]
    sources = {(await producer.status(j)).source for j in await job_ids(producer.redis)}  # type: ignore[union-attr]  # the job exists
    assert sources == {f"s3://{buckets.src}/l 1.png", f"s3://{buckets.src}/dir/photo 2.png"}
    # Batch Operations tasks: the bulk lane, a batch named after the Batch Operations job
    task_job = by_task["t1"]["resultString"].split()[-1]
    rec = await producer.status(task_job)
    assert rec is not None and rec.lane == "bulk" and rec.batch == "s3-batch-job-1"
    assert await producer.redis.zcard(BULK_QUEUE_NAME) == 1


async def test_batch_operations_back_pressure(
    stack_env: None, producer: Producer, buckets: Buckets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the bulk lane's limit, tasks are answered TemporaryFailure (Batch Operations
    retries them later) and nothing is enqueued; with room, they go in."""
    monkeypatch.setenv("UPSCALE_RATE_RPM", "60")  # limit: max(1000, 10 x RPM) = 1,000 jobs
    get_settings.cache_clear()
    filler = [
        build_spec(f"s3://{buckets.src}/fill/{i}.png", lane="bulk", settings=producer.settings)
        for i in range(1000)
    ]
    await producer.enqueue_specs(filler)
    ops = {
        "invocationSchemaVersion": "2.0",
        "invocationId": "inv-2",
        "job": {"id": "job-2"},
        "tasks": [
            {"taskId": "t1", "s3Key": "new.png", "s3VersionId": None, "s3Bucket": buckets.src}
        ],
    }
    out = await handle(ops)
    assert [r["resultCode"] for r in out["results"]] == ["TemporaryFailure"]
    assert await producer.redis.zcard(BULK_QUEUE_NAME) == 1000
    await producer.redis.zremrangebyrank(BULK_QUEUE_NAME, 0, 9)  # workers took 10
    out = await handle(ops)
    assert [r["resultCode"] for r in out["results"]] == ["Succeeded"]
    assert await producer.redis.zcard(BULK_QUEUE_NAME) == 991
