"""The naive baseline for `make bench`: a plain arq job with a retry decorator, no shared pacing.

What a team writes first: read the image, POST it to the gateway, retry 429/5xx/402 with
exponential backoff, store the result. Each process paces itself; nobody paces the fleet.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import boto3
import httpx
from arq.connections import RedisSettings

QUEUE = "naive:queue"
DONE = "naive:done"
P = ParamSpec("P")
T = TypeVar("T")


class Retryable(Exception):
    pass


def retry(tries: int = 8, base: float = 0.5, cap: float = 20.0) -> Callable[..., Any]:
    """The usual decorator: exponential backoff with jitter on retryable errors."""

    def wrap(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def inner(*args: P.args, **kwargs: P.kwargs) -> T:
            for attempt in range(tries):
                try:
                    return await fn(*args, **kwargs)
                except Retryable:
                    if attempt == tries - 1:
                        raise
                    await asyncio.sleep(random.uniform(0, min(cap, base * 2**attempt)))
            raise AssertionError("unreachable")

        return inner

    return wrap


def _s3() -> Any:
    return boto3.client(
        "s3",
        endpoint_url=os.environ["UPSCALE_S3_ENDPOINT_URL"],
        aws_access_key_id=os.environ["UPSCALE_S3_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["UPSCALE_S3_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )


@retry()
async def call_upstream(client: httpx.AsyncClient, data: bytes) -> str:
    body = {
        "model": "ideogram/ideogram-upscale",
        "n": 1,
        "response_format": "url",
        "image": "data:image/png;base64," + base64.b64encode(data).decode(),
    }
    r = await client.post(
        os.environ["UPSCALE_GATEWAY_URL"] + "/v1/images/generations",
        json=body,
        headers={"Authorization": f"Bearer {os.environ['UPSCALE_API_KEY']}"},
    )
    if r.status_code in (402, 429) or r.status_code >= 500:
        raise Retryable(r.status_code)
    r.raise_for_status()
    return str(r.json()["data"][0]["url"])


async def naive_upscale(ctx: dict[str, Any], bucket: str, key: str) -> None:
    s3 = ctx["s3"]
    try:
        data = (await asyncio.to_thread(s3.get_object, Bucket=bucket, Key=key))["Body"].read()
        url = await call_upstream(ctx["http"], data)
        out = (await ctx["http"].get(url)).content
        await asyncio.to_thread(s3.put_object, Bucket=bucket, Key="out/" + key, Body=out)
    finally:
        await ctx["redis"].incr(DONE)


async def startup(ctx: dict[str, Any]) -> None:
    ctx["s3"] = _s3()
    ctx["http"] = httpx.AsyncClient(timeout=60)


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["http"].aclose()


class WorkerSettings:
    functions = [naive_upscale]  # noqa: RUF012 - arq reads class attributes
    queue_name = QUEUE
    redis_settings = RedisSettings.from_dsn(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    on_startup = startup
    on_shutdown = shutdown
    max_jobs = 32
    max_tries = 1  # the decorator does the retrying
