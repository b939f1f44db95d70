"""The recursion guard against real S3: our outputs never become jobs, a user's `*@2x.*` file
does. A real SeaweedFS filer event loop (the output written into the watched bucket comes back
as an event and is ignored), and the HEAD that decides a key whose name alone cannot (outputs
among the sources, `{key_stem}@2x.{ext}` in the same bucket)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import pytest
import structlog
from pydantic import SecretStr
from redis.asyncio import Redis

from infra.stack import LocalStack, WebhookTarget, free_port
from producers.api import Producer
from producers.lambda_handler import handle
from producers.webhook import create_app
from tests.integration.conftest import Buckets, drain, job_ids, put
from tests.support import HTTP_TIMEOUT_S, TOKEN, png, s3_event, serving
from worker.api import META_JOB_ID
from worker.keys import Keys
from worker.settings import Settings

SAME_BUCKET = "s3://{bucket}/{key_stem}@2x.{ext}"


@pytest.mark.parametrize(
    ("template", "key", "dest_key"),
    [
        ("s3://{bucket}/upscaled/{key}", "in/cat one.png", "upscaled/in/cat one.png"),
        # a retina asset: a job of its own; its output's event carries our metadata (the filer
        # sends user metadata), so it is ignored without a HEAD
        (SAME_BUCKET, "in/logo@2x.png", "in/logo@2x@2x.png"),
    ],
)
async def test_output_written_to_the_watched_bucket_does_not_loop(
    tmp_path: Path, template: str, key: str, dest_key: str
) -> None:
    port = free_port()
    target = WebhookTarget(f"http://127.0.0.1:{port}/events", TOKEN)
    with LocalStack(webhook=target) as stack:
        env = stack.env()
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            settings = Settings(
                api_token=TOKEN, dest_template=template, pause_poll_s=0.1, log_format="console"
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
            put(stack, "watched", key, png(16, 16))
            job_id = await _wait_for_job(redis)
            await drain(settings)
            rec = await producer.wait_for(job_id, timeout=30)
            assert rec.state == "succeeded" and rec.calls == 1
            assert rec.dest == f"s3://watched/{dest_key}"
            # the output's own create event arrives and is ignored by the guard
            ignored = await _wait_for_intake(redis, "ignored")
            assert ignored >= 1
        assert len(await job_ids(redis)) == 1
        assert await redis.hget(Keys.intake, "guard_heads") is None
        await redis.aclose()


@pytest.fixture
def same_bucket(settings: Settings) -> Settings:
    return settings.model_copy(update={"dest_template": SAME_BUCKET, "api_token": SecretStr(TOKEN)})


async def test_retina_file_gets_a_job_on_every_event_path(
    stack: LocalStack,
    stack_env: None,
    redis: Redis,
    settings: Settings,
    buckets: Buckets,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Default template (outputs in `<bucket>-upscaled`): a user's `photos/logo@2x.png` is a
    source on the webhook, SQS-in-Lambda and direct-Lambda paths (the `upscale sqs` path: the
    moto end-to-end test), with no HEAD."""
    put(stack, buckets.src, "photos/logo@2x.png", png(8, 8))
    tokened = settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        serving(create_app(Producer(redis, tokened))) as url,
        httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as c,
    ):
        body = s3_event(buckets.src, "photos/logo@2x.png", etag="w1")
        r = (await c.post(f"{url}/events", content=body, headers=auth)).json()
        assert r["enqueued"] == 1 and r["ignored"] == [], r
    sqs_record = {
        "messageId": "m1",
        "eventSource": "aws:sqs",
        "body": s3_event(buckets.src, "photos/logo@2x.png", etag="l1"),
    }
    assert await handle({"Records": [sqs_record]}) == {"batchItemFailures": []}
    direct = await handle(json.loads(s3_event(buckets.src, "photos/logo@2x.png", etag="d1")))
    assert direct["enqueued"] == 1
    assert len(await job_ids(redis)) == 3  # three ETags: three versions, three jobs
    assert int(await redis.hget(Keys.intake, "enqueued")) == 3  # type: ignore[misc]
    assert await redis.hget(Keys.intake, "guard_heads") is None  # type: ignore[misc]


async def test_same_bucket_outputs_are_told_apart_by_a_head(
    stack: LocalStack, redis: Redis, same_bucket: Settings, buckets: Buckets
) -> None:
    """`{key_stem}@2x.{ext}` in the source's bucket: `logo@2x.png` is exactly the destination
    of `logo.png`, so the name cannot tell. A HEAD does: a user's file gets a job, our output
    (our job-id metadata) is ignored, logged with its reason and counted; a plain key is never
    HEADed."""
    s3 = stack.s3_client()
    s3.put_object(Bucket=buckets.src, Key="a/logo.png", Body=png(8, 8))
    s3.put_object(Bucket=buckets.src, Key="a/logo@2x.png", Body=png(16, 16))  # a user's
    s3.put_object(
        Bucket=buckets.src,
        Key="a/cat@2x.png",
        Body=png(16, 16),
        Metadata={META_JOB_ID: "uq-earlier"},  # ours
    )
    producer = Producer(redis, same_bucket)
    async with serving(create_app(producer)) as url, httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as c:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with structlog.testing.capture_logs() as logs:
            results = {
                key: (
                    await c.post(f"{url}/events", content=s3_event(buckets.src, key), headers=auth)
                ).json()
                for key in ("a/logo.png", "a/logo@2x.png", "a/cat@2x.png")
            }
    assert results["a/logo.png"]["enqueued"] == 1
    assert results["a/logo@2x.png"]["enqueued"] == 1
    assert results["a/cat@2x.png"]["enqueued"] == 0
    (why,) = results["a/cat@2x.png"]["ignored"]
    assert "provenance metadata" in why
    ignored_lines = [e for e in logs if e["event"] == "event ignored"]
    assert len(ignored_lines) == 1 and ignored_lines[0]["source"] == "webhook"
    assert "a/cat@2x.png" in ignored_lines[0]["reason"]
    intake = {k.decode(): int(v) for k, v in (await redis.hgetall(Keys.intake)).items()}  # type: ignore[misc]
    assert intake["ignored"] == 1 and intake["enqueued"] == 2 and intake["guard_heads"] == 2


async def _wait_for_job(redis: Redis) -> str:
    async with asyncio.timeout(20):
        while True:
            async for k in redis.scan_iter(Keys.job("*")):
                return str(k.decode().removeprefix(Keys.job("")))
            await asyncio.sleep(0.05)  # the filer delivers asynchronously (~0.3 s)


async def _wait_for_intake(redis: Redis, field: str) -> int:
    async with asyncio.timeout(20):
        while True:
            v = await redis.hget(Keys.intake, field)  # type: ignore[misc]  # redis-py's async stubs
            if v:
                return int(v)
            await asyncio.sleep(0.05)
