"""The webhook receiver end to end: S3-style events (bearer auth, malformed bodies, decoded keys,
redelivery, versions, deletes) and HTTP enqueue with status."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import structlog
from pydantic import SecretStr
from redis.asyncio import Redis

from infra.stack import LocalStack
from producers.api import Producer
from producers.webhook import create_app
from tests.integration.conftest import Buckets, put
from tests.support import HTTP_TIMEOUT_S, TOKEN, png, s3_event, serving
from worker.keys import Keys
from worker.settings import Settings


@pytest.fixture
def token_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_token": SecretStr(TOKEN)})


@pytest.fixture
async def webhook(redis: Redis, token_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serving(create_app(Producer(redis, token_settings))) as url,
        httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=HTTP_TIMEOUT_S
        ) as client,
    ):
        yield client


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
    webhook: httpx.AsyncClient, producer: Producer, buckets: Buckets, stack: LocalStack
) -> None:
    for key in ("x.png", "y.png"):  # enqueue reads each source's ETag: they must exist
        put(stack, buckets.src, key, png())
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
    gone = await webhook.post("/jobs", json={"source": f"s3://{buckets.src}/nope.png"})
    assert gone.status_code == 404 and "no such object" in gone.json()["error"]
    # cancel over HTTP: a queued job ends at once; an unknown one is a 404
    cancelled = await webhook.post(f"/jobs/{ids[1]}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["outcome"] == "cancelled"
    assert (await webhook.post("/jobs/uq-nope/cancel")).status_code == 404
    whole = await webhook.post("/batches/svc/cancel")
    assert whole.status_code == 200 and whole.json()["cancelled"] == 1
    assert (await webhook.post("/batches/nope/cancel")).status_code == 404


async def test_webhook_ignores_our_outputs_with_a_logged_reason_not_retina_names(
    webhook: httpx.AsyncClient, redis: Redis, buckets: Buckets, stack: LocalStack
) -> None:
    put(stack, buckets.src, "icons/logo@2x.png", png(8, 8))
    with structlog.testing.capture_logs() as logs:
        user = await webhook.post("/events", content=s3_event(buckets.src, "icons/logo@2x.png"))
        ours = await webhook.post("/events", content=s3_event(buckets.dest, "icons/logo@2x.png"))
    assert user.json()["enqueued"] == 1 and user.json()["ignored"] == []
    (why,) = ours.json()["ignored"]
    assert "destination location" in why
    (line,) = [e for e in logs if e["event"] == "event ignored"]
    assert line["source"] == "webhook" and buckets.dest in line["reason"]
    assert await redis.hget(Keys.intake, "ignored") == b"1"  # type: ignore[misc]
