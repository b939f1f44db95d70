"""End to end against moto's standalone server as S3 + SQS, with moto's own bucket notification
delivery (S3 -> SQS, as AWS does it): uploads -> notifications -> `upscale sqs` (a real process)
-> jobs in the ledger. Moto differs from AWS here in that its records carry no `sequencer` or
`versionId`; the key is form-encoded as AWS does (`logo%402x.png`). Also the errors a wrong
region or endpoint gives, as a user meets them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from redis.asyncio import Redis

from infra.stack import LocalStack, free_port
from producers.api import Producer
from tests.integration.conftest import job_ids
from tests.support import png
from tests.unit.test_cli_errors import Run, assert_one_line, clean_env, upscale
from worker.api import META_JOB_ID
from worker.keys import Keys
from worker.settings import Settings


@dataclass
class Moto:
    endpoint: str
    s3: Any
    sqs: Any


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    kw = {
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    yield Moto(endpoint, boto3.client("s3", **kw), boto3.client("sqs", **kw))
    server.stop()


def _watched(moto: Moto, queue: str, *buckets: str) -> str:
    """Buckets whose object-created notifications moto delivers to a new queue."""
    url = str(moto.sqs.create_queue(QueueName=queue)["QueueUrl"])
    arn = moto.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    config = {
        "QueueConfigurations": [
            {"QueueArn": arn["Attributes"]["QueueArn"], "Events": ["s3:ObjectCreated:*"]}
        ]
    }
    for b in buckets:
        moto.s3.create_bucket(Bucket=b)
        moto.s3.put_bucket_notification_configuration(Bucket=b, NotificationConfiguration=config)
    return url


def _env(stack: LocalStack, moto: Moto, **extra: str) -> dict[str, str]:
    """`upscale` with the stack's Redis and moto as AWS (S3 and SQS by AWS_ENDPOINT_URL)."""
    base = {
        "REDIS_URL": stack.redis_url,
        "AWS_ENDPOINT_URL": moto.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "UPSCALE_S3_ADDRESSING_STYLE": "path",
    }
    return clean_env(**{**base, **extra})


async def _upscale_sqs(queue_url: str, env: dict[str, str], cwd: Path) -> Run:
    return await asyncio.to_thread(
        upscale, "sqs", "--queue-url", queue_url, "--until-empty", "--wait", "1", "--json",
        env=env, cwd=cwd,
    )  # fmt: skip


@pytest.mark.parametrize(
    "template", ["s3://{bucket}-upscaled/{key_stem}@2x.{ext}", "s3://{bucket}/{key_stem}@2x.{ext}"]
)
async def test_user_retina_upload_is_a_job_our_output_is_not(
    stack: LocalStack, moto: Moto, redis: Redis, settings: Settings, tmp_path: Path, template: str
) -> None:
    """A user's `logo@2x.png` upload -> moto's notification -> SQS -> `upscale sqs` -> a job;
    our own output's notification -> ignored, with its reason counted. With outputs in a bucket
    of their own the location decides; with outputs among the sources (same bucket) one HEAD
    against moto reads the object's metadata."""
    n = template.count("-upscaled")
    src, out = f"photos{n}", f"photos{n}-upscaled" if n else f"photos{n}"
    queue = _watched(moto, f"events{n}", *dict.fromkeys([src, out]))
    moto.s3.put_object(Bucket=src, Key="logo@2x.png", Body=png(8, 8))  # a retina asset
    moto.s3.put_object(
        Bucket=out, Key="cat@2x.png", Body=png(16, 16), Metadata={META_JOB_ID: "uq-earlier"}
    )  # what a worker writes
    env = _env(stack, moto, UPSCALE_DEST_TEMPLATE=template)
    r = await _upscale_sqs(queue, env, tmp_path)
    assert r.rc == 0, r
    stats = json.loads(r.out)
    assert stats["enqueued"] == 1 and stats["ignored"] >= 1 and stats["dead_lettered"] == 0
    (job,) = await job_ids(redis)
    rec = await Producer(redis, settings).status(job)
    assert rec is not None and rec.source == f"s3://{src}/logo@2x.png"
    assert rec.dest == f"s3://{out}/logo@2x@2x.png"
    intake = {k.decode(): int(v) for k, v in (await redis.hgetall(Keys.intake)).items()}  # type: ignore[misc]
    assert intake["ignored"] >= 1  # the output (and moto's s3:TestEvent)
    assert intake.get("guard_heads", 0) == (0 if n else 2)  # both `@2x` keys, same bucket only


async def test_queue_in_another_region_names_the_region(
    stack: LocalStack, moto: Moto, redis: Redis, tmp_path: Path
) -> None:
    queue = str(moto.sqs.create_queue(QueueName="east-only")["QueueUrl"])
    env = _env(stack, moto, AWS_REGION="eu-west-1")
    r = await _upscale_sqs(queue, env, tmp_path)
    line = assert_one_line(r, "SQS", "does not exist", "eu-west-1", "AWS_REGION", moto.endpoint)
    assert "S3" not in line and "AWS_ENDPOINT_URL" in line
    assert json.loads(line)["variable"] == "AWS_REGION", line
