"""arq entry point: `WorkerSettings` (for `arq worker.app.WorkerSettings`) and `run_worker()`.

`upscale worker` uses `run_worker()`, which also stops picking jobs while the fleet is paused
(arq's `allow_pick_jobs`), so a long pause leaves jobs queued instead of cycling them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any

import structlog
from arq import Worker, func
from pydantic import ValidationError

from worker.callbacks import NOTIFY_FUNCTION, notify
from worker.contract import ARQ_FUNCTION, BULK_QUEUE_NAME, QUEUE_NAME, QUEUES, JobSpec, queue_for
from worker.health import serve_health
from worker.job import UpscaleJob, record_invalid_payload
from worker.logs import configure_logging
from worker.redis_conn import connect, deserialize, serialize, settings_for
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
    # One runtime per process, shared by both lanes' arq workers (they share this ctx dict).
    ctx["_users"] = ctx.get("_users", 0) + 1
    if "runtime" in ctx:
        return
    settings: Settings = ctx.get("settings") or get_settings()
    configure_logging(settings.log_format, settings.log_level)
    # Its own connection: in burst mode one lane's worker closes its pool before the other.
    ctx["runtime"] = create_runtime(settings, await connect(settings))
    if settings.metrics_port:
        ctx["health_server"] = await serve_health(ctx["runtime"], settings.metrics_port)
    workers: list[Worker] = ctx.get("arq_workers", [])
    if workers:
        ctx["pause_watch"] = asyncio.create_task(_watch_pause(ctx["runtime"], workers))
    log.info(
        "worker started",
        queues=[w.queue_name for w in workers] or [QUEUE_NAME],
        route=settings.route,
        max_jobs=settings.max_jobs,
    )


async def shutdown(ctx: dict[str, Any]) -> None:
    ctx["_users"] = ctx.get("_users", 1) - 1
    if ctx["_users"] > 0:
        return
    task = ctx.pop("pause_watch", None)
    if task is not None:
        task.cancel()
    server = ctx.pop("health_server", None)
    if server is not None:
        await server.cleanup()
    rt: Runtime | None = ctx.pop("runtime", None)
    if rt is not None:
        await rt.aclose()
        await rt.redis.aclose()


async def _watch_pause(rt: Runtime, workers: list[Worker]) -> None:
    """Keep `allow_pick_jobs` in step with the fleet's pause flag (never undoing a shutdown).

    While paused, a worker picks jobs only when a canary call is due, so one job per interval
    can probe the upstream and a long pause does not cycle the whole queue.
    """
    closed_by_us = False
    sampled_minute = 0
    while True:
        try:
            minute = int(time.time() // 60)
            if minute != sampled_minute:
                await rt.ledger.sample_depth(minute)  # the dashboard's depth-over-the-hour chart
                sampled_minute = minute
            gate = await rt.flow.gate()
            if gate == "closed" and any(w.allow_pick_jobs for w in workers) and not closed_by_us:
                for w in workers:
                    w.allow_pick_jobs = False
                closed_by_us = True
                log.info("fleet paused: not picking jobs")
            elif gate != "closed" and closed_by_us:
                for w in workers:
                    w.allow_pick_jobs = True
                closed_by_us = False
                if gate == "open":
                    log.info("fleet resumed: picking jobs")
        except Exception as e:  # Redis away: arq itself will notice; keep watching
            log.warning("pause watch failed", error=str(e))
        await asyncio.sleep(rt.settings.pause_poll_s)


def worker_options(settings: Settings, lane: str = "live") -> dict[str, Any]:
    max_jobs = settings.max_jobs if lane == "live" else settings.bulk_max_jobs or settings.max_jobs
    return {
        "functions": [
            func(
                upscale, name=ARQ_FUNCTION, max_tries=ARQ_MAX_TRIES, timeout=settings.job_timeout_s
            ),
            func(
                notify,
                name=NOTIFY_FUNCTION,
                max_tries=ARQ_MAX_TRIES,
                timeout=min(60, settings.job_timeout_s),
            ),
        ],
        "queue_name": queue_for(lane),
        "redis_settings": settings_for(settings),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "max_jobs": max_jobs,
        "job_timeout": settings.job_timeout_s,
        # A deploy drains: running (paid) calls finish before the process exits.
        "job_completion_wait": settings.job_timeout_s,
        "keep_result": 60,
        "max_tries": ARQ_MAX_TRIES,
        "poll_delay": 0.2,
        # Must exceed the jobs in flight fleet-wide, or running jobs fill every read.
        "queue_read_limit": max(1000, max_jobs * 50),
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "health_check_interval": 30,
        "handle_signals": True,
    }


class WorkerSettings:
    """For `arq worker.app.WorkerSettings` (live lane) and `arq worker.app.BulkWorkerSettings`.

    `upscale worker` is the better way: one process serves both lanes and stops picking jobs
    while the fleet is paused.
    """

    _s = get_settings()
    functions = worker_options(_s)["functions"]
    queue_name = QUEUE_NAME
    redis_settings = settings_for(_s)
    on_startup = startup
    on_shutdown = shutdown
    max_jobs = _s.max_jobs
    job_timeout = _s.job_timeout_s
    job_completion_wait = _s.job_timeout_s
    max_tries = ARQ_MAX_TRIES
    job_serializer = serialize
    job_deserializer = deserialize


class BulkWorkerSettings(WorkerSettings):
    queue_name = BULK_QUEUE_NAME


class LaneWorkers:
    """One arq worker per lane in one process, sharing a runtime: a process serves both lanes,
    so it never idles while either has work; the flow control decides who calls first."""

    def __init__(self, settings: Settings, *, burst: bool = False, **overrides: Any) -> None:
        ctx: dict[str, Any] = {"settings": settings}
        self.workers = [
            Worker(ctx=ctx, **{**worker_options(settings, lane), "burst": burst, **overrides})
            for lane in QUEUES
        ]
        ctx["arq_workers"] = self.workers

    def handle_signal(self, sig: signal.Signals) -> None:
        for w in self.workers:
            w.handle_sig_wait_for_completion(sig)  # drain: running (paid) jobs finish

    async def async_run(self) -> None:
        await asyncio.gather(*(w.async_run() for w in self.workers), return_exceptions=True)

    async def close(self) -> None:
        for w in self.workers:
            with contextlib.suppress(Exception):
                await w.close()


def build_worker(settings: Settings, *, burst: bool = False, **overrides: Any) -> LaneWorkers:
    return LaneWorkers(settings, burst=burst, **overrides)


async def run_worker(settings: Settings, *, burst: bool = False) -> None:
    workers = LaneWorkers(settings, burst=burst, handle_signals=False)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, workers.handle_signal, sig)
    try:
        await workers.async_run()
    finally:
        await workers.close()


def main(burst: bool = False) -> None:
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    asyncio.run(run_worker(settings, burst=burst))
