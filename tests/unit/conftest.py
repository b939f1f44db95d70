"""Unit fixtures: a real redis-server of its own (no S3, no simulator)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from infra.stack import die_with_parent, free_port


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="uq-unit-redis-")
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
         "127.0.0.1", "--dir", tmp, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            SyncRedis.from_url(url).ping()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield url
    proc.kill()
    proc.wait(5)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[Redis]:
    client: Redis = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()
