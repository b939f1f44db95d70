"""The Lambda handler end to end: SQS records (a malformed one acknowledged) and S3 Batch
Operations tasks (per-task result codes; our own outputs skipped)."""

from __future__ import annotations

from urllib.parse import quote_plus

from producers.api import Producer
from producers.lambda_handler import handle
from tests.integration.conftest import Buckets, job_ids
from tests.support import s3_event


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
