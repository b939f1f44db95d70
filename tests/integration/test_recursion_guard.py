"""The recursion guard against a real SeaweedFS filer event loop: an output written into the
watched bucket comes back as an event and is ignored, not enqueued."""

from __future__ import annotations

import asyncio
from pathlib import Path

from redis.asyncio import Redis

from infra.stack import LocalStack, WebhookTarget, free_port
from producers.api import Producer
from producers.webhook import create_app
from tests.integration.conftest import drain, put
from tests.support import TOKEN, png, serving
from worker.keys import Keys
from worker.settings import Settings


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
        jobs = [k async for k in redis.scan_iter(Keys.job("*"))]
        assert len(jobs) == 1
        await redis.aclose()


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
