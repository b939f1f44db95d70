"""End to end against moto's standalone server as S3 + SQS + SNS + EventBridge, with moto's own
bucket notification delivery (as AWS does it): uploads -> notifications -> `upscale sqs` (a real
process) -> jobs in the ledger -> real `upscale worker` processes -> the simulator -> outputs in
moto's S3, one per upload; the outputs' own notifications come back and make no job. Also the
errors a wrong region or endpoint gives, as a user meets them.

What moto (5.2) delivers, and where it differs from AWS:
- S3 -> SQS (QueueConfigurations): an `s3:TestEvent` per bucket, then one `Records` message per
  object. No `sequencer` and no `versionId` in the records; the key is form-encoded as AWS
  does (`+` for a space, `%2B` for a plus, `%40` for `@`), but with `quote_plus`, so `/` is
  `%2F` too (AWS leaves it).
- S3 -> SNS -> SQS (TopicConfigurations, the queue subscribed to the topic): the same records,
  raw (RawMessageDelivery) or in the SNS envelope (`Type: Notification`, `Message` a string);
  the test event goes through SNS as well.
- S3 -> EventBridge -> SQS (EventBridgeConfiguration, a rule on the default bus targeting the
  queue): `detail-type: Object Created`, the key raw (not encoded), `eTag` where AWS writes
  `etag` (both are read), and a `version-id` of the string "null" in an unversioned bucket (AWS
  sends its version id only for a versioned bucket); `reason` is `ObjectCreated` (AWS: the API,
  `PutObject`);
  every event has the same `sequencer` (`617f08299329d189`) and `id`; no test event.
Every route is delivered by moto itself: no body is sent by the test. The workers read and write
moto's S3, and the simulator fetches each source by a presigned moto URL (`url` image mode)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image
from redis.asyncio import Redis

from infra.stack import LocalStack, free_port
from producers.api import Producer
from tests.integration.conftest import FAST, Sim, WorkerProcs, job_ids
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
    sns: Any
    events: Any


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
    yield Moto(endpoint, *(boto3.client(s, **kw) for s in ("s3", "sqs", "sns", "events")))
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


# -- every route, end to end ---------------------------------------------------------------------
# A user's uploads: a plain name, a key form encoding must carry (a space, a plus, a `/`) that is
# also a retina asset's name, and a JPEG; each with its output's key under the default template
# (`s3://{bucket}-upscaled/{key_stem}@2x.{ext}`).
UPLOADS = {"cat.png": png(12, 8), "dir/a b+c@2x.png": png(8, 8), "photo.jpg": png(10, 6, "JPEG")}
OUTPUTS = {
    "cat.png": "cat@2x.png",
    "dir/a b+c@2x.png": "dir/a b+c@2x@2x.png",
    "photo.jpg": "photo@2x.jpg",
}
ROUTES = ["queue", "sns-raw", "sns-wrapped", "eventbridge"]


def _route(moto: Moto, route: str, *buckets: str) -> str:
    """Buckets whose object-created notifications moto delivers, by `route`, to a new queue."""
    name = f"uploads-{route}"
    url = str(moto.sqs.create_queue(QueueName=name)["QueueUrl"])
    arn = moto.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    queue_arn = arn["Attributes"]["QueueArn"]
    created = ["s3:ObjectCreated:*"]
    config: dict[str, Any]
    if route == "queue":
        config = {"QueueConfigurations": [{"QueueArn": queue_arn, "Events": created}]}
    elif route.startswith("sns"):
        topic = moto.sns.create_topic(Name=name)["TopicArn"]
        raw = {"RawMessageDelivery": str(route == "sns-raw").lower()}
        moto.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes=raw)
        config = {"TopicConfigurations": [{"TopicArn": topic, "Events": created}]}
    else:
        pattern = {
            "source": ["aws.s3"],
            "detail-type": ["Object Created"],
            "detail": {"bucket": {"name": list(buckets)}},
        }
        moto.events.put_rule(Name=name, EventPattern=json.dumps(pattern))
        moto.events.put_targets(Rule=name, Targets=[{"Id": "uploads", "Arn": queue_arn}])
        config = {"EventBridgeConfiguration": {}}
    for b in buckets:
        moto.s3.create_bucket(Bucket=b)
        moto.s3.put_bucket_notification_configuration(Bucket=b, NotificationConfiguration=config)
    return url


def _keys(moto: Moto, bucket: str) -> set[str]:
    listed = moto.s3.list_objects_v2(Bucket=bucket)
    return {str(o["Key"]) for o in listed.get("Contents", [])}


@pytest.mark.parametrize("route", ROUTES)
async def test_uploads_through_every_route_to_one_output_each(
    stack: LocalStack,
    moto: Moto,
    sim: Sim,
    redis: Redis,
    settings: Settings,
    workers: WorkerProcs,
    tmp_path: Path,
    route: str,
) -> None:
    """Uploads to moto's S3 -> moto's notification by `route` -> `upscale sqs` -> real workers
    -> the simulator (fetching the source by a presigned moto URL) -> one output per upload in
    moto's S3. The outputs' bucket is watched by the same route: their notifications come back
    through `upscale sqs` and are ignored (0 jobs, 0 calls: the bill is the number of uploads)."""
    src = f"e2e-{route}"
    out = f"{src}-upscaled"  # the default destination template's bucket
    queue = _route(moto, route, src, out)
    test_events = 0 if route == "eventbridge" else 2  # one per watched bucket
    etags = {
        key: str(moto.s3.put_object(Bucket=src, Key=key, Body=body)["ETag"]).strip('"')
        for key, body in UPLOADS.items()
    }
    env = _env(stack, moto)

    r = await _upscale_sqs(queue, env, tmp_path)
    assert r.rc == 0, r
    first = json.loads(r.out)
    assert first["enqueued"] == len(UPLOADS), first
    assert first["ignored"] == test_events and first["dead_lettered"] == 0, first
    producer = Producer(redis, settings)
    jobs = await job_ids(redis)
    assert len(jobs) == len(UPLOADS)
    pinned = {}  # what each job names of its source's content
    for j in jobs:
        rec = await producer.status(j)
        assert rec is not None
        pinned[rec.source.removeprefix(f"s3://{src}/")] = (rec.source_etag, rec.source_version)
    if route == "eventbridge":  # moto's `eTag` is read too; its `version-id` is "null"
        assert pinned == {k: (etag, "null") for k, etag in etags.items()}, pinned
    else:  # the record's eTag; no versionId from moto
        assert pinned == {k: (etag, None) for k, etag in etags.items()}, pinned

    # the workers read and write moto's S3; the simulator fetches moto's presigned URLs
    workers.start(
        2,
        **FAST,
        s3_endpoint_url=moto.endpoint,
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        AWS_ENDPOINT_URL=moto.endpoint,
    )
    records = await producer.wait_for_all(jobs, timeout=30)
    assert {rec.state for rec in records} == {"succeeded"}, [(x.state, x.note) for x in records]
    assert {rec.source for rec in records} == {f"s3://{src}/{k}" for k in UPLOADS}
    assert all(rec.calls == 1 for rec in records)
    assert {rec.dest for rec in records} == {f"s3://{out}/{k}" for k in OUTPUTS.values()}
    assert _keys(moto, out) == set(OUTPUTS.values())  # one output per upload
    assert _keys(moto, src) == set(UPLOADS)  # nothing written among the sources
    for key, body in UPLOADS.items():
        got = moto.s3.get_object(Bucket=out, Key=OUTPUTS[key])
        assert got["Metadata"][META_JOB_ID] in jobs
        w, h = Image.open(io.BytesIO(body)).size
        assert Image.open(io.BytesIO(got["Body"].read())).size == (2 * w, 2 * h)  # upscaled

    # moto delivered the outputs' notifications too: read, recognised as ours, no job
    r = await _upscale_sqs(queue, env, tmp_path)
    assert r.rc == 0, r
    second = json.loads(r.out)
    assert second["enqueued"] == 0 and second["ignored"] == len(UPLOADS), second
    assert second["dead_lettered"] == 0, second
    assert sorted(await job_ids(redis)) == sorted(jobs)
    intake = {k.decode(): int(v) for k, v in (await redis.hgetall(Keys.intake)).items()}  # type: ignore[misc]
    assert intake.get("guard_heads", 0) == 0  # the location decides: no HEAD
    bill = sim.stats()
    assert bill["billed_calls"] == bill["calls"] == len(UPLOADS), bill
