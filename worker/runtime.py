"""The long-lived objects one worker process shares between its jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import httpx
import structlog
from redis.asyncio import Redis

from worker.flow import FlowControl
from worker.flow.waker import Waker
from worker.ledger import Ledger
from worker.logs import register_secret
from worker.replicas import Replicas
from worker.settings import Settings
from worker.storage import Storage
from worker.upstream import make_upstream
from worker.upstream.base import Upstream

log = structlog.get_logger("worker.runtime")


@dataclass
class Runtime:
    settings: Settings
    redis: Redis
    ledger: Ledger
    flow: FlowControl
    storage: Storage
    upstreams: dict[str, Upstream]  # one client per key of the pool, by name
    downloads: httpx.AsyncClient
    # job id -> run token of every job this process runs (renewed by `worker.leases`)
    runs: dict[str, str] = field(default_factory=dict)
    # job ids whose run here lost its lease (reclaimed): arq's bookkeeping of the job is the
    # newer run's, so the stale run's end leaves it alone (`ResilientWorker.finish_job`)
    fenced: set[str] = field(default_factory=set)
    redis_ok: bool = True  # false while Redis is unreachable (readiness)
    draining: bool = False  # set on SIGTERM: picking never reopens
    waker: Waker = field(default_factory=Waker)  # a slot was freed somewhere in the fleet
    background: set[asyncio.Task[object]] = field(default_factory=set)  # `in_background`

    @cached_property
    def result_hosts(self) -> set[str]:
        """Hosts paid results may be downloaded from: every pool member's."""
        return set().union(*(m.upstream.allowed_result_hosts() for m in self.flow.pool))

    def in_background(self, work: Coroutine[Any, Any, object], failure: str) -> None:
        """Run `work` beside the job (kept referenced until done); a failure is logged."""

        def done(task: asyncio.Task[object]) -> None:
            self.background.discard(task)
            if not task.cancelled() and (e := task.exception()) is not None:
                log.warning(failure, error=type(e).__name__)

        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(done)

    def upstream(self, name: str) -> Upstream:
        """The client of pool member `name` (a slot from before pools: the first)."""
        return self.upstreams.get(name) or next(iter(self.upstreams.values()))

    async def aclose(self) -> None:
        if self.background:  # reports still on their way
            await asyncio.wait(self.background, timeout=5)
        for up in self.upstreams.values():
            await up.aclose()
        await self.downloads.aclose()


def create_runtime(settings: Settings, redis: Redis) -> Runtime:
    flow = FlowControl(redis, settings)
    up = settings.upstream
    for m in flow.pool:
        register_secret(m.upstream.api_key_value)
    for secret in settings.secrets():
        register_secret(secret)
    return Runtime(
        settings=settings,
        redis=redis,
        ledger=Ledger(
            redis,
            retention_ms=settings.jobs.ledger_retention_s * 1000,
            replicas=Replicas.from_settings(redis, settings.redis),
        ),
        flow=flow,
        storage=Storage(settings.s3),
        upstreams={m.name: make_upstream(m.upstream) for m in flow.pool},
        downloads=httpx.AsyncClient(
            timeout=httpx.Timeout(up.read_timeout_s, connect=up.connect_timeout_s),
            follow_redirects=False,
        ),
    )
