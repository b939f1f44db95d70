"""The webhook receiver end to end: S3-style events (bearer auth, malformed bodies, decoded keys,
redelivery, versions, deletes) and HTTP enqueue with status."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from producers.api import Producer
from producers.webhook import create_app
from tests.integration.conftest import Buckets
from tests.support import TOKEN, s3_event, serving
from worker.settings import Settings


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
