"""Producers end to end: webhook receiver + HTTP enqueue, SQS consumer (moto server), backfill,
the Lambda handler, and the recursion guard against a real SeaweedFS filer event loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import boto3
import httpx
import pytest
from click.testing import CliRunner
from moto.server import ThreadedMotoServer
from pydantic import SecretStr
from redis.asyncio import Redis

from infra.stack import LocalStack, WebhookTarget, free_port
from producers.api import Producer
from producers.backfill import Backfill, BackfillPlan, BackfillStats, Filters, checkpoint_key
from producers.cli import main as cli
from producers.lambda_handler import handle
from producers.sqs import DEAD_LETTERS, SqsConsumer
from producers.webhook import create_app
from tests.integration.conftest import Buckets, drain, put
from tests.support import TOKEN, png, s3_event, serving
from worker.contract import BULK_QUEUE_NAME, QUEUE_NAME, S3Object, job_id_for
from worker.settings import Settings
from worker.storage import make_s3_client


@pytest.fixture
def token_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_token": SecretStr(TOKEN)})


@pytest.fixture
async def webhook(redis: Redis, token_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serving(create_app(Producer(redis, token_settings))) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client,
    ):
        yield client


# -- webhook + HTTP enqueue -------------------------------------------------------------------


async def test_webhook_rejects_unauthenticated_and_malformed(
    webhook: httpx.AsyncClient, buckets: Buckets
) -> None:
    body = s3_event(buckets.src, "a.png")
    assert (await webhook.get("/healthz")).status_code == 200
    r = await webhook.post("/events", content=body, headers={"Authorization": ""})
    assert r.status_code == 401 and "bearer" in r.json()["error"]
    r = await webhook.post("/events", content=body, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = await webhook.post("/events", content=b"{not json")
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    r = await webhook.post("/events", content=b'{"hello": "world"}')
    assert r.status_code == 400 and "unrecognised" in r.json()["error"]
    r = await webhook.post("/events", content=b"")
    assert r.status_code == 400


async def test_webhook_event_enqueues_decoded_key_once(
    webhook: httpx.AsyncClient, producer: Producer, buckets: Buckets
) -> None:
    key = "café/summer 2+1 100%.png"
    body = s3_event(buckets.src, key, etag="e1")
    first = (await webhook.post("/events", content=body)).json()
    again = (await webhook.post("/events", content=body)).json()  # redelivery
    assert first["enqueued"] == 1 and again["duplicates"] == 1
    (job_id,) = first["job_ids"]
    assert again["job_ids"] == [job_id]
    rec = await producer.status(job_id)
    assert rec is not None and rec.source == f"s3://{buckets.src}/{key}" and rec.lane == "live"
    # a new version (new etag) of the same key is a new job; a delete is ignored
    newer = (await webhook.post("/events", content=s3_event(buckets.src, key, etag="e2"))).json()
    assert newer["enqueued"] == 1 and newer["job_ids"] != [job_id]
    deleted = s3_event(buckets.src, key, name="ObjectRemoved:Delete")
    assert (await webhook.post("/events", content=deleted)).json()["enqueued"] == 0


async def test_http_enqueue_and_status(
    webhook: httpx.AsyncClient, producer: Producer, buckets: Buckets
) -> None:
    r = await webhook.post(
        "/jobs",
        json={
            "jobs": [
                {"source": f"s3://{buckets.src}/x.png", "prompt": "crisp", "batch": "svc"},
                {"source": f"s3://{buckets.src}/y.png", "batch": "svc"},
            ]
        },
    )
    assert r.status_code == 200
    ids = [j["job_id"] for j in r.json()["jobs"]]
    assert [j["outcome"] for j in r.json()["jobs"]] == ["created", "created"]
    job = (await webhook.get(f"/jobs/{ids[0]}")).json()
    assert job["state"] == "queued" and job["source"] == f"s3://{buckets.src}/x.png"
    batch = (await webhook.get("/batches/svc")).json()
    assert batch["total"] == 2
    assert (await webhook.get("/jobs/uq-nope")).status_code == 404
    bad = await webhook.post("/jobs", json={"source": "photos/x.png"})
    assert bad.status_code == 400 and "s3://" in bad.json()["error"]
    bad = await webhook.post("/jobs", json={"source": f"s3://{buckets.src}/x.png", "zoom": 4})
    assert bad.status_code == 400 and "zoom" in bad.json()["error"]
    bad = await webhook.post(
        "/jobs", json={"source": f"s3://{buckets.src}/x.png", "resemblance": 500}
    )
    assert bad.status_code == 400 and "resemblance" in bad.json()["error"]


# -- SQS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sqs_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def sqs(sqs_endpoint: str) -> Any:
    return boto3.client(
        "sqs",
        endpoint_url=sqs_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _queue(sqs: Any, name: str) -> str:
    return str(sqs.create_queue(QueueName=name)["QueueUrl"])


def _visible(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"]
    )


async def test_sqs_consumer_enqueues_deletes_and_dead_letters(
    sqs: Any, producer: Producer, buckets: Buckets
) -> None:
    url = _queue(sqs, f"events-{buckets.src}")
    sns_wrapped = json.dumps(
        {"Type": "Notification", "Message": s3_event(buckets.src, "b c.png", etag="2")}
    )
    for body in (
        s3_event(buckets.src, "a+b.png", etag="1"),
        sns_wrapped,
        json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": buckets.src}),
        "this is not json",
    ):
        sqs.send_message(QueueUrl=url, MessageBody=body)
    consumer = SqsConsumer(producer, sqs, url, wait_s=0)
    stats = await consumer.run(until_empty=True)
    assert (stats.messages, stats.enqueued, stats.dead_lettered) == (4, 2, 1)
    assert _visible(sqs, url) == 0  # everything handled was deleted
    (dead,) = await producer.redis.lrange(DEAD_LETTERS, 0, -1)  # type: ignore[misc]  # redis-py's async stubs
    entry = json.loads(dead)
    assert "not JSON" in entry["reason"] and entry["body"] == "this is not json"
    keys = {(await producer.status(j)).source for j in await _all_jobs(producer)}  # type: ignore[union-attr]  # the job exists
    assert keys == {f"s3://{buckets.src}/a+b.png", f"s3://{buckets.src}/b c.png"}


async def test_sqs_crash_between_enqueue_and_delete_redelivers_into_one_job(
    sqs: Any, producer: Producer, buckets: Buckets
) -> None:
    url = _queue(sqs, f"crash-{buckets.src}")
    sqs.send_message(QueueUrl=url, MessageBody=s3_event(buckets.src, "k.png"))

    class Crash(Exception):
        pass

    class DiesBeforeDelete:
        def __getattr__(self, name: str) -> Any:
            return getattr(sqs, name)

        def delete_message_batch(self, **_: Any) -> None:
            raise Crash  # the process dies after enqueue, before the delete

    with pytest.raises(Crash):
        await SqsConsumer(producer, DiesBeforeDelete(), url, wait_s=0, visibility_s=1).poll_once()
    assert await producer.redis.zcard(QUEUE_NAME) == 1
    # SQS redelivers after the visibility timeout; the restarted consumer finds a duplicate
    consumer = SqsConsumer(producer, sqs, url, wait_s=2)
    while consumer.stats.messages == 0:
        await consumer.poll_once()
    assert consumer.stats.duplicates == 1 and consumer.stats.enqueued == 0
    assert await producer.redis.zcard(QUEUE_NAME) == 1
    assert _visible(sqs, url) == 0


async def test_sqs_consumer_keeps_messages_when_redis_is_down(
    sqs: Any, settings: Settings, buckets: Buckets
) -> None:
    url = _queue(sqs, f"down-{buckets.src}")
    sqs.send_message(QueueUrl=url, MessageBody=s3_event(buckets.src, "k.png"))
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    consumer = SqsConsumer(Producer(dead, settings), sqs, url, wait_s=0, visibility_s=30)
    assert await consumer.poll_once() == 1
    assert consumer.stats.errors == 1
    assert _visible(sqs, url) == 1  # not deleted: it comes back when Redis does
    await dead.aclose()


async def _all_jobs(producer: Producer) -> list[str]:
    return [k.decode().removeprefix("uq:job:") async for k in producer.redis.scan_iter("uq:job:*")]


# -- Lambda handler ---------------------------------------------------------------------------


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
    sources = {(await producer.status(j)).source for j in await _all_jobs(producer)}  # type: ignore[union-attr]  # the job exists
    assert sources == {f"s3://{buckets.src}/l 1.png", f"s3://{buckets.src}/dir/photo 2.png"}


# -- backfill ---------------------------------------------------------------------------------


def _fill(stack: LocalStack, bucket: str, n: int) -> None:
    data = png(8, 8)
    for i in range(n):
        put(stack, bucket, f"set/img {i:03d}.png", data)
    put(stack, bucket, "set/notes.txt", b"not an image")
    put(stack, bucket, "set/zz-empty.png", b"")


async def test_backfill_resumes_from_checkpoint(
    stack: LocalStack, producer: Producer, settings: Settings, buckets: Buckets
) -> None:
    _fill(stack, buckets.src, 25)
    s3 = make_s3_client(settings.s3)
    plan = BackfillPlan(
        source=f"s3://{buckets.src}/set/",
        batch="bf",
        filters=Filters(include=["*.png"]),
        chunk=10,
    )

    class Interrupted(Exception):
        pass

    def stop_after_first_chunk(st: BackfillStats) -> None:
        if st.enqueued >= 10:
            raise Interrupted

    with pytest.raises(Interrupted):
        await Backfill(producer.redis, settings, s3, plan, stop_after_first_chunk).run()
    assert await producer.redis.zcard(BULK_QUEUE_NAME) == 10
    stats = await Backfill(producer.redis, settings, s3, plan).run()
    assert stats.resumed_from.startswith("set/img 00")
    assert stats.enqueued == 15 and stats.duplicates == 0
    assert stats.skipped == {"filtered": 1, "size": 1}
    assert await producer.redis.zcard(BULK_QUEUE_NAME) == 25
    ck = await producer.redis.hgetall(checkpoint_key("bf"))  # type: ignore[misc]  # redis-py's async stubs
    assert ck[b"done"] == b"1"
    summary = await producer.ledger.batch_summary("bf")
    assert summary["total"] == 25
    rec = await producer.status(job_id_for_key(settings, buckets.src, "set/img 000.png", s3))
    assert rec is not None and rec.lane == "bulk"
    # a full re-run from scratch only finds duplicates: nothing is enqueued (or paid) twice
    again = await Backfill(
        producer.redis, settings, s3, BackfillPlan(**{**plan.__dict__, "restart": True})
    ).run()
    assert again.enqueued == 0 and again.duplicates == 25


def job_id_for_key(settings: Settings, bucket: str, key: str, s3: Any) -> str:
    from producers.api import build_spec

    etag = s3.head_object(Bucket=bucket, Key=key)["ETag"]
    spec = build_spec(
        S3Object(bucket=bucket, key=key, etag=etag), batch="bf", lane="bulk", settings=settings
    )
    return job_id_for(spec)


def test_backfill_dry_run_cli_prints_count_and_cost(
    stack: LocalStack, stack_env: None, buckets: Buckets
) -> None:
    _fill(stack, buckets.src, 7)
    r = CliRunner().invoke(
        cli, ["backfill", f"s3://{buckets.src}/set/", "--include", "*.png", "--dry-run", "--json"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{") :])
    assert out["matched"] == 7 and out["enqueued"] == 0
    assert out["estimated_cost_usd"] == pytest.approx(7 * 0.06)


# -- recursion guard: a real SeaweedFS filer event loop ---------------------------------------


async def test_output_written_to_the_watched_bucket_does_not_loop(tmp_path: Path) -> None:
    port = free_port()
    target = WebhookTarget(f"http://127.0.0.1:{port}/events", TOKEN)
    with LocalStack(webhook=target) as stack:
        import os

        env = stack.env()
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            settings = Settings(
                api_token=TOKEN,
                dest_template="s3://{bucket}/upscaled/{key}",
                pause_poll_s=0.1,
                log_format="console",
            )
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        redis = Redis.from_url(settings.redis.url)
        producer = Producer(redis, settings)
        s3 = stack.s3_client()
        s3.create_bucket(Bucket="watched")
        async with serving(create_app(producer), port):
            put(stack, "watched", "in/cat one.png", png(16, 16))
            job_id = await _wait_for_job(redis)
            await drain(settings)
            rec = await producer.wait_for(job_id, timeout=30)
            assert rec.state == "succeeded"
            assert rec.dest == "s3://watched/upscaled/in/cat one.png"
            # the output's own create event arrives and is ignored by the guard
            ignored = await _wait_for_intake(redis, "ignored")
            assert ignored >= 1
        jobs = [k async for k in redis.scan_iter("uq:job:*")]
        assert len(jobs) == 1
        await redis.aclose()


async def _wait_for_job(redis: Redis) -> str:
    async with asyncio.timeout(20):
        while True:
            async for k in redis.scan_iter("uq:job:*"):
                return str(k.decode().removeprefix("uq:job:"))
            await asyncio.sleep(0.05)  # the filer delivers asynchronously (~0.3 s)


async def _wait_for_intake(redis: Redis, field: str) -> int:
    async with asyncio.timeout(20):
        while True:
            v = await redis.hget("uq:intake", field)  # type: ignore[misc]  # redis-py's async stubs
            if v:
                return int(v)
            await asyncio.sleep(0.05)
