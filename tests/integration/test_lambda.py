"""The Lambda handler end to end: SQS records (a malformed one reported as a batch item
failure, logged and counted), JSON log lines in a real process, and S3 Batch Operations tasks
(per-task result codes; our own outputs skipped, a user's `@2x` file processed)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from urllib.parse import quote_plus

import pytest
from redis.asyncio import Redis

from infra.stack import LocalStack
from producers.api import Producer, build_spec
from producers.lambda_handler import handle
from tests.integration.conftest import Buckets, job_ids, put
from tests.support import png, s3_event
from tests.unit.test_cli_errors import clean_env
from worker.contract import BULK_QUEUE_NAME
from worker.keys import Keys
from worker.settings import get_settings


async def test_lambda_handler_sqs_and_batch_operations(
    stack: LocalStack, stack_env: None, producer: Producer, buckets: Buckets
) -> None:
    for key in ("l 1.png", "dir/photo 2.png", "dir/photo@2x.png"):
        put(stack, buckets.src, key, png(8, 8))
    sqs_event = {
        "Records": [
            {"messageId": "m1", "eventSource": "aws:sqs", "body": s3_event(buckets.src, "l 1.png")},
            {"messageId": "m2", "eventSource": "aws:sqs", "body": "garbage"},
        ]
    }
    # malformed: never acknowledged (Lambda would delete it): retried, then the queue's DLQ
    assert await handle(sqs_event) == {"batchItemFailures": [{"itemIdentifier": "m2"}]}
    assert await producer.redis.hget(Keys.intake, "malformed") == b"1"  # type: ignore[misc]
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
                "s3Key": "dir/photo@2x.png",  # a retina asset: a source like any other
                "s3VersionId": None,
                "s3BucketArn": f"arn:aws:s3:::{buckets.src}",
            },
            {
                "taskId": "t3",
                "s3Key": "dir/photo@2x.png",  # in the destination bucket: our output
                "s3VersionId": None,
                "s3BucketArn": f"arn:aws:s3:::{buckets.dest}",
            },
        ],
    }
    out = await handle(ops)
    by_task = {r["taskId"]: r for r in out["results"]}
    assert by_task["t1"]["resultCode"] == "Succeeded", by_task
    assert "created" in by_task["t1"]["resultString"]
    assert by_task["t2"]["resultCode"] == "Succeeded" and "created" in by_task["t2"]["resultString"]
    assert by_task["t3"]["resultCode"] == "Succeeded" and "skipped" in by_task["t3"]["resultString"]
    sources = {(await producer.status(j)).source for j in await job_ids(producer.redis)}  # type: ignore[union-attr]  # the job exists
    assert sources == {
        f"s3://{buckets.src}/l 1.png",
        f"s3://{buckets.src}/dir/photo 2.png",
        f"s3://{buckets.src}/dir/photo@2x.png",
    }
    # Batch Operations tasks: the bulk lane, a batch named after the Batch Operations job
    task_job = by_task["t1"]["resultString"].split()[-1]
    rec = await producer.status(task_job)
    assert rec is not None and rec.lane == "bulk" and rec.batch == "s3-batch-job-1"
    assert await producer.redis.zcard(BULK_QUEUE_NAME) == 2


async def test_batch_operations_back_pressure(
    stack: LocalStack,
    stack_env: None,
    producer: Producer,
    buckets: Buckets,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Over the bulk lane's limit, tasks are answered TemporaryFailure (Batch Operations
    retries them later) and nothing is enqueued; with room, they go in."""
    monkeypatch.setenv("UPSCALE_RATE_RPM", "60")  # limit: max(1000, 10 x RPM) = 1,000 jobs
    get_settings.cache_clear()
    filler = [
        build_spec(  # an ETag given: no HEAD at enqueue (these objects need not exist)
            f"s3://{buckets.src}/fill/{i}.png",
            lane="bulk",
            etag=f"e{i}",
            settings=producer.settings,
        )
        for i in range(1000)
    ]
    await producer.enqueue_specs(filler)
    put(stack, buckets.src, "new.png", png(8, 8))
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


async def test_lambda_logs_json_lines_and_reports_the_malformed_record(
    stack: LocalStack, redis: Redis, buckets: Buckets
) -> None:
    """The handler in a process of its own, as Lambda runs it: `UPSCALE_LOG_FORMAT=json` gives
    JSON lines only, the malformed record is a batch item failure with its reason logged."""
    event = {
        "Records": [
            {"messageId": "ok", "eventSource": "aws:sqs", "body": s3_event(buckets.src, "j.png")},
            {"messageId": "bad", "eventSource": "aws:sqs", "body": "{not json"},
        ]
    }
    code = (
        "import json, sys; from producers.lambda_handler import handler; "
        "print(json.dumps(handler(json.loads(sys.stdin.read()))))"
    )
    env = clean_env(**stack.env(), UPSCALE_LOG_FORMAT="json", UPSCALE_LOG_LEVEL="INFO")
    p = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", code],
        input=json.dumps(event),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"batchItemFailures": [{"itemIdentifier": "bad"}]}
    lines = [json.loads(ln) for ln in p.stderr.splitlines() if ln.strip()]  # JSON, every one
    failed = [ln for ln in lines if ln.get("message_id") == "bad"]
    assert failed and "malformed" in failed[0]["reason"] and failed[0]["level"] == "warning"
    assert any(ln["event"] == "malformed notification" for ln in lines)
    assert await redis.hget(Keys.intake, "malformed") == b"1"  # type: ignore[misc]
    assert len(await job_ids(redis)) == 1
