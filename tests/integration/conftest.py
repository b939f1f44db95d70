"""Integration fixtures: one real local stack per test session (redis-server, SeaweedFS, the
simulator) started on free ports; each test gets a flushed Redis, fresh buckets and a reset
simulator, so tests stay isolated. Unit tests (`tests/unit/`) never see these fixtures, so they
never start the stack. The helpers here (`Sim`, `Buckets`, `put`, `drain`, `wait_state`,
`job_ids`, `WorkerProcs`, `FAST`) are imported by the integration tests."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from infra.simulator.config import SimConfig
from infra.stack import LocalStack, die_with_parent
from producers.api import Producer
from tests.support import HTTP_TIMEOUT_S
from worker.app import build_worker
from worker.contract import Keys
from worker.ledger import JobRecord
from worker.settings import Settings, get_settings

_bucket_ids = itertools.count(1)
_log_ids = itertools.count(1)


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    with LocalStack() as s:
        yield s


class Sim:
    """The simulator's admin API (counters, config, wallet)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=HTTP_TIMEOUT_S)

    def reset(self) -> None:
        self.http.post("/_admin/reset").raise_for_status()
        # every field back to its default (a test's burst rule or wallets must not leak)
        self.configure(**{**SimConfig().model_dump(mode="json"), "api_keys": {"sim-key": 6000}})

    def configure(self, **cfg: Any) -> None:
        self.http.post("/_admin/config", json=cfg).raise_for_status()

    def wallet(self, **body: float) -> None:
        self.http.post("/_admin/wallet", json=body).raise_for_status()

    def stats(self) -> dict[str, Any]:
        r = self.http.get("/_admin/stats")
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data


@pytest.fixture
def sim(stack: LocalStack) -> Iterator[Sim]:
    s = Sim(stack.simulator_url)
    s.reset()
    yield s
    s.http.close()


@pytest.fixture
def settings(stack: LocalStack) -> Settings:
    env = stack.env()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        s = Settings(
            backoff_base_s=0.05,
            backoff_max_s=0.2,
            pause_poll_s=0.1,
            max_attempts=3,
            rate_rpm=6000,
            max_inflight=8,
            log_format="console",
        )
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return s


@pytest.fixture
def stack_env(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The stack's settings in the environment, for entry points that read it themselves."""
    for k, v in stack.env().items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    r: Redis = Redis.from_url(settings.redis.url)
    await r.flushdb()
    yield r
    await r.aclose()


@pytest.fixture
async def producer(redis: Redis, settings: Settings) -> Producer:
    return Producer(redis, settings)


@dataclass
class Buckets:
    src: str
    dest: str


@pytest.fixture
def buckets(stack: LocalStack) -> Buckets:
    n = next(_bucket_ids)
    b = Buckets(src=f"in-{os.getpid()}-{n}", dest=f"in-{os.getpid()}-{n}-upscaled")
    s3 = stack.s3_client()
    for name in (b.src, b.dest):
        s3.create_bucket(Bucket=name)
    return b


def put(stack: LocalStack, bucket: str, key: str, data: bytes) -> str:
    r = stack.s3_client().put_object(Bucket=bucket, Key=key, Body=data)
    return str(r["ETag"]).strip('"')


async def job_ids(redis: Redis) -> list[str]:
    """The id of every job in the ledger."""
    return [k.decode().removeprefix(Keys.job("")) async for k in redis.scan_iter(Keys.job("*"))]


async def drain(settings: Settings, *, timeout: float = 60, until_paused: bool = False) -> None:
    """Run one in-process worker until the queue is empty (arq burst mode), or, with
    `until_paused`, until the fleet is paused and no job is still running."""
    worker = build_worker(settings, burst=True, handle_signals=False, poll_delay=0.05)
    task = asyncio.create_task(worker.async_run())
    try:
        if not until_paused:
            await asyncio.wait_for(task, timeout)
            return
        r: Redis = Redis.from_url(settings.redis.url)
        try:
            async with asyncio.timeout(timeout):
                while not (
                    await r.exists(Keys.pause, Keys.up("default").pause)
                    and int(await r.hget(Keys.states, "running") or 0) == 0  # type: ignore[misc]  # redis-py's async stubs
                ):
                    await asyncio.sleep(0.05)
        finally:
            await r.aclose()
    finally:
        task.cancel()
        await worker.close()


async def wait_state(
    producer: Producer, job_id: str, *states: str, timeout: float = 30
) -> JobRecord:
    """Wait until a job's ledger record reaches one of `states`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rec = await producer.status(job_id)
        if rec is not None and rec.state in states:
            return rec
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"job {job_id} still {rec.state if rec else 'missing'}, wanted {states}"
            )
        await asyncio.sleep(0.05)


class WorkerProcs:
    """Real `upscale worker` processes (separate interpreters) sharing the stack's Redis."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, n: int, **overrides: object) -> list[subprocess.Popen[bytes]]:
        env = {**os.environ, **self.env, "UPSCALE_LOG_FORMAT": "json"}
        # lower-case names are settings (UPSCALE_*); upper-case ones are plain variables
        env.update(
            {
                (k if k.isupper() else f"UPSCALE_{k.upper()}"): _env_value(v)
                for k, v in overrides.items()
            }
        )
        started = [
            subprocess.Popen(
                [sys.executable, "-m", "producers.cli", "worker"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(self._log_path(), "wb"),  # noqa: SIM115 - closed with the process
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
            for _ in range(n)
        ]
        self.procs += started
        return started

    def _log_path(self) -> str:
        # UQ_TEST_WORKER_LOGS=dir keeps worker logs for debugging; otherwise they are discarded.
        d = os.environ.get("UQ_TEST_WORKER_LOGS")
        return os.path.join(d, f"worker-{next(_log_ids)}.log") if d else os.devnull

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.procs:
            p.wait(10)


def _env_value(v: object) -> str:
    return json.dumps(v) if isinstance(v, list | dict) else str(v)


# Settings every multi-process test starts from (fast backoff, quick pause polling).
FAST = {
    "backoff_base_s": 0.05,
    "backoff_max_s": 0.2,
    "pause_poll_s": 0.1,
    "max_attempts": 3,
    "log_level": "WARNING",
}


@pytest.fixture
def workers(stack: LocalStack) -> Iterator[WorkerProcs]:
    w = WorkerProcs(stack.env())
    yield w
    w.stop()
