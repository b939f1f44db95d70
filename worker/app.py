"""arq entry point: `WorkerSettings` (for `arq worker.app.WorkerSettings`) and `run_worker()`.

`upscale worker` uses `run_worker()`, which also stops picking jobs while the fleet is paused
(arq's `allow_pick_jobs`), so a long pause leaves jobs queued instead of cycling them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import structlog
from arq import Worker, func
from pydantic import ValidationError

from worker.contract import ARQ_FUNCTION, QUEUE_NAME, JobSpec
from worker.job import UpscaleJob, record_invalid_payload
from worker.logs import configure_logging
from worker.redis_conn import deserialize, redis_settings, serialize
from worker.runtime import Runtime, create_runtime
from worker.settings import Settings, get_settings

log = structlog.get_logger("worker.app")

# Waiting uses arq's Retry, and every Retry costs an arq try: put the cap out of reach and
# count real failures ourselves (ledger `attempts`, bounded by `max_attempts`).
ARQ_MAX_TRIES = 1_000_000


async def upscale(ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    rt: Runtime = ctx["runtime"]
    try:
        spec = JobSpec.model_validate(payload)
    except ValidationError as e:
        await record_invalid_payload(rt, ctx["job_id"], f"invalid job payload: {e}")
        return {"state": "failed", "error": "invalid payload"}
    job = UpscaleJob(rt, spec, ctx["job_id"])
    # Beat arq's own timeout (which would end the job without a ledger update): a job that
    # overruns is a failed attempt with backoff, and any paid result stays saved for the retry.
    limit = rt.settings.job_timeout_s
    try:
        async with asyncio.timeout(max(1.0, limit - min(5.0, limit * 0.1))):
            return await job.run()
    except TimeoutError:
        return await job.on_timeout()


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx.get("settings") or get_settings()
    configure_logging(settings.log_format, settings.log_level)
    ctx["runtime"] = create_runtime(settings, ctx["redis"])
    worker: Worker | None = ctx.get("arq_worker")
    if worker is not None:
        ctx["pause_watch"] = asyncio.create_task(_watch_pause(ctx["runtime"], worker))
    log.info("worker started", queue=QUEUE_NAME, route=settings.route, max_jobs=settings.max_jobs)


async def shutdown(ctx: dict[str, Any]) -> None:
    task = ctx.get("pause_watch")
    if task is not None:
        task.cancel()
    rt: Runtime | None = ctx.get("runtime")
    if rt is not None:
        await rt.aclose()


async def _watch_pause(rt: Runtime, worker: Worker) -> None:
    """Keep `allow_pick_jobs` in step with the fleet's pause flag (never undoing a shutdown).

    While paused, a worker picks jobs only when a canary call is due, so one job per interval
    can probe the upstream and a long pause does not cycle the whole queue.
    """
    closed_by_us = False
    while True:
        try:
            gate = await rt.flow.gate()
            if gate == "closed" and worker.allow_pick_jobs:
                worker.allow_pick_jobs = False
                closed_by_us = True
                log.info("fleet paused: not picking jobs")
            elif gate != "closed" and closed_by_us:
                worker.allow_pick_jobs = True
                closed_by_us = False
                if gate == "open":
                    log.info("fleet resumed: picking jobs")
        except Exception as e:  # Redis away: arq itself will notice; keep watching
            log.warning("pause watch failed", error=str(e))
        await asyncio.sleep(rt.settings.pause_poll_s)


def worker_options(settings: Settings) -> dict[str, Any]:
    return {
        "functions": [
            func(
                upscale, name=ARQ_FUNCTION, max_tries=ARQ_MAX_TRIES, timeout=settings.job_timeout_s
            )
        ],
        "queue_name": QUEUE_NAME,
        "redis_settings": redis_settings(settings.redis_url),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "max_jobs": settings.max_jobs,
        "job_timeout": settings.job_timeout_s,
        # A deploy drains: running (paid) calls finish before the process exits.
        "job_completion_wait": settings.job_timeout_s,
        "keep_result": 60,
        "max_tries": ARQ_MAX_TRIES,
        "poll_delay": 0.2,
        # Must exceed the jobs in flight fleet-wide, or running jobs fill every read.
        "queue_read_limit": max(1000, settings.max_jobs * 50),
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "health_check_interval": 30,
        "handle_signals": True,
    }


class WorkerSettings:
    """For `arq worker.app.WorkerSettings` (the pause watcher needs `run_worker` instead)."""

    _s = get_settings()
    functions = worker_options(_s)["functions"]
    queue_name = QUEUE_NAME
    redis_settings = redis_settings(_s.redis_url)
    on_startup = startup
    on_shutdown = shutdown
    max_jobs = _s.max_jobs
    job_timeout = _s.job_timeout_s
    job_completion_wait = _s.job_timeout_s
    max_tries = ARQ_MAX_TRIES
    job_serializer = serialize
    job_deserializer = deserialize


def build_worker(settings: Settings, *, burst: bool = False, **overrides: Any) -> Worker:
    ctx: dict[str, Any] = {"settings": settings}
    opts = {**worker_options(settings), "burst": burst, **overrides}
    worker = Worker(ctx=ctx, **opts)
    ctx["arq_worker"] = worker
    return worker


async def run_worker(settings: Settings, *, burst: bool = False) -> None:
    worker = build_worker(settings, burst=burst)
    try:
        await worker.async_run()
    finally:
        with contextlib.suppress(Exception):
            await worker.close()


def main(burst: bool = False) -> None:
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    asyncio.run(run_worker(settings, burst=burst))
