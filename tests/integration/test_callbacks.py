"""Completion notices: signed callbacks with retries and an allow-list; event-driven waits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from pydantic import SecretStr

from infra.stack import LocalStack
from producers.api import Producer
from tests.integration.conftest import Buckets, drain, put
from tests.support import png, serving
from worker.callbacks import verify
from worker.settings import Settings

SECRET = "callback-secret-0123"


@dataclass
class Receiver:
    url: str = ""
    fail_first: int = 0
    bodies: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    got: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append((dict(request.headers), await request.read()))
        self.got.set()
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=500)
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    async with serving(app) as url:
        r.url = url + "/hook"
        yield r


@pytest.fixture
def cb_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "callback_secret": SecretStr(SECRET),
            "callback_hosts": ["127.0.0.1"],
            "callback_allow_http": True,
            "callback_backoff_s": 0.05,
        }
    )


async def test_job_callback_is_signed_retried_and_recorded(
    stack: LocalStack,
    producer: Producer,
    buckets: Buckets,
    receiver: Receiver,
    cb_settings: Settings,
) -> None:
    receiver.fail_first = 1  # the receiver is down once: the notice is retried
    put(stack, buckets.src, "a.png", png(10, 10))
    job_id = (await producer.enqueue(f"s3://{buckets.src}/a.png", callback_url=receiver.url)).job_id
    waiter = asyncio.create_task(producer.wait_for(job_id, timeout=60))
    await drain(cb_settings)
    rec = await waiter  # woken by the ledger's event, not a polling loop
    assert rec.state == "succeeded"
    assert len(receiver.bodies) == 2
    headers, body = receiver.bodies[-1]
    assert verify(SECRET, headers["X-Upscale-Timestamp"], body, headers["X-Upscale-Signature"])
    assert not verify("wrong", headers["X-Upscale-Timestamp"], body, headers["X-Upscale-Signature"])
    doc = json.loads(body)
    assert doc["type"] == "job" and doc["job"]["job_id"] == job_id
    assert doc["job"]["state"] == "succeeded" and doc["job"]["cost_usd"] == pytest.approx(0.06)
    after = await producer.status(job_id)
    assert (
        after is not None and after.callback_state == "delivered" and after.callback_attempts == 2
    )


async def test_callback_host_not_allowed_is_refused(
    stack: LocalStack,
    producer: Producer,
    buckets: Buckets,
    receiver: Receiver,
    cb_settings: Settings,
) -> None:
    put(stack, buckets.src, "a.png", png(10, 10))
    bad = receiver.url.replace("127.0.0.1", "localhost")  # same server, host not allowed
    job_id = (await producer.enqueue(f"s3://{buckets.src}/a.png", callback_url=bad)).job_id
    await drain(cb_settings)
    rec = await producer.status(job_id)
    assert rec is not None and rec.state == "succeeded"
    assert rec.callback_state == "refused" and "not in UPSCALE_CALLBACK_HOSTS" in (
        rec.callback_detail or ""
    )
    assert receiver.bodies == []


async def test_batch_notice_once_every_job_is_final(
    stack: LocalStack,
    producer: Producer,
    buckets: Buckets,
    receiver: Receiver,
    cb_settings: Settings,
) -> None:
    put(stack, buckets.src, "a.png", png(10, 10))
    put(stack, buckets.src, "b.png", b"not an image")
    for k in ("a.png", "b.png"):
        await producer.enqueue(f"s3://{buckets.src}/{k}", batch="nightly")
    await producer.set_batch_callback("nightly", receiver.url)
    waiter = asyncio.create_task(producer.wait_for_batch("nightly", timeout=60))
    await drain(cb_settings)
    summary = await waiter
    assert summary.total == 2 and summary.done
    (only,) = receiver.bodies
    doc = json.loads(only[1])
    assert doc["type"] == "batch" and doc["batch"]["total"] == 2
    assert doc["batch"]["states"] == {"succeeded": 1, "failed": 1}
    assert doc["batch"]["spend_usd"] == pytest.approx(0.06)
