"""arq entry point: `WorkerSettings` (for `arq worker.app.WorkerSettings`) and `run_worker()`.

The process, not arq's poll loop, owns the lifecycle: one runtime per process (shared by both
lanes), one `Lifecycle` task (run-lease heartbeat, reclaim, heal), one gate watch that stops
picking jobs while nothing can be admitted, and arq workers whose poll loops ride out a Redis
outage instead of dying (running jobs keep running).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import Sequence
from typing import Any

import structlog
from arq import Worker, func

from worker.callbacks import NOTIFY_FUNCTION, notify
from worker.contract import ARQ_FUNCTION, JobSpec
from worker.gate_watch import watch_gate
from worker.health import serve_health
from worker.job import UpscaleJob
from worker.keys import QUEUE_NAME, QUEUES, queue_for
from worker.ledger import record_invalid_payload
from worker.lifecycle import Lifecycle
from worker.logs import configure_logging
from worker.poller import ResilientWorker
from worker.redis_conn import REDIS_DOWN, connect, deserialize, serialize, settings_for
from worker.report.job import report_function
from worker.runtime import Runtime, create_runtime
from worker.settings import Settings, get_settings

log = structlog.get_logger("worker.app")

# Waiting hands the job back through arq's Retry, and every start costs an arq try: put the cap
# out of reach and count real failures ourselves (ledger `attempts`, bounded by `max_attempts`).
ARQ_MAX_TRIES = 1_000_000
_RUNTIME_LOCK = asyncio.Lock()


async def upscale(ctx: dict[str, Any], payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """arq's entry point. The job's request is read from its ledger record (stored once); a
    payload is accepted too (jobs queued by a version that sent the spec through arq)."""
    rt: Runtime = ctx["runtime"]
    job_id: str = ctx["job_id"]
    try:
        spec = JobSpec.model_validate(payload) if payload else await rt.ledger.spec(job_id)
    except ValueError as e:  # pydantic's ValidationError included
        await record_invalid_payload(rt.ledger, job_id, f"invalid job payload: {e}")
        return {"state": "failed", "error": "invalid payload"}
    if spec is None:
        log.warning("job has no ledger record; enqueue it with upscale-queue", job_id=job_id)
        return {"state": "failed", "error": "no ledger record"}
    return await UpscaleJob(rt, spec, job_id).run()


async def _process_runtime(ctx: dict[str, Any]) -> Runtime:
    """The process's runtime, created once (both lanes' start-ups may race for it)."""
    async with _RUNTIME_LOCK:
        if "runtime" not in ctx:
            settings: Settings = ctx.get("settings") or get_settings()
            configure_logging(settings.ops.log_format, settings.ops.log_level)
            # Its own connection: in burst mode one lane's worker closes its pool first.
            ctx["runtime"] = create_runtime(settings, await connect(settings.redis))
        rt: Runtime = ctx["runtime"]
        return rt


async def startup(ctx: dict[str, Any]) -> None:
    """arq's on_startup. Under `upscale worker` the process set everything up already; under
    plain `arq worker.app.WorkerSettings` this sets up the same for the one lane it serves."""
    ctx["_users"] = ctx.get("_users", 0) + 1
    if ctx.get("process_owned"):
        return
    worker = _calling_worker()
    rt = await _process_runtime(ctx)
    if "tasks" not in ctx:
        ctx["tasks"] = _background(rt, [worker] if worker else [])
        if rt.settings.ops.metrics_port:
            ctx["health_server"] = await serve_health(rt, rt.settings.ops.metrics_port)
        log.info("worker started", queues=[worker.queue_name] if worker else [QUEUE_NAME])


def _calling_worker() -> Worker | None:
    # arq gives start-up hooks no handle on their worker; its main task is `Worker.main()`.
    task = asyncio.current_task()
    frame = getattr(task.get_coro(), "cr_frame", None) if task else None
    owner = frame.f_locals.get("self") if frame else None
    return owner if isinstance(owner, Worker) else None


async def shutdown(ctx: dict[str, Any]) -> None:
    ctx["_users"] = ctx.get("_users", 1) - 1
    if ctx["_users"] > 0 or ctx.get("process_owned"):
        return
    await _teardown(ctx)


async def _teardown(ctx: dict[str, Any]) -> None:
    for task in ctx.pop("tasks", []):
        task.cancel()
    server = ctx.pop("health_server", None)
    if server is not None:
        await server.cleanup()
    rt: Runtime | None = ctx.pop("runtime", None)
    if rt is not None:
        await rt.aclose()
        with contextlib.suppress(*REDIS_DOWN):
            await rt.redis.aclose()


def _background(rt: Runtime, workers: Sequence[Worker]) -> list[asyncio.Task[None]]:
    # arq's in-progress TTL is its longest function timeout + 10 s (the report's hour, not
    # job_timeout): the healer ages a claim whose run never started by it
    functions = worker_options(rt.settings)["functions"]
    longest = max(f.timeout_s or rt.settings.jobs.job_timeout_s for f in functions)
    in_progress_ms = int((longest + 10) * 1000)
    return [
        asyncio.create_task(Lifecycle(rt, in_progress_ttl_ms=in_progress_ms).run()),
        asyncio.create_task(watch_gate(rt, workers)),
        asyncio.create_task(rt.waker.run(rt.redis)),
    ]


def worker_options(settings: Settings, lane: str = "live") -> dict[str, Any]:
    jobs = settings.jobs
    max_jobs = jobs.lane_max_jobs(lane)
    return {
        "functions": [
            func(upscale, name=ARQ_FUNCTION, max_tries=ARQ_MAX_TRIES, timeout=jobs.job_timeout_s),
            func(
                notify,
                name=NOTIFY_FUNCTION,
                max_tries=ARQ_MAX_TRIES,
                timeout=min(60, jobs.job_timeout_s),
            ),
            report_function(jobs.job_timeout_s),
        ],
        "queue_name": queue_for(lane),
        "redis_settings": settings_for(settings.redis),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "max_jobs": max_jobs,
        "job_timeout": jobs.job_timeout_s,
        # A deploy drains: running (paid) calls finish before the process exits.
        "job_completion_wait": jobs.job_timeout_s,
        "keep_result": 0,  # the ledger is the record; arq's result would only cost a write
        "max_tries": ARQ_MAX_TRIES,
        "poll_delay": 0.2,
        # Must exceed the jobs in flight fleet-wide, or running jobs fill every read.
        "queue_read_limit": max(1000, max_jobs * 50),
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "health_check_interval": 30,
        "handle_signals": True,
    }


# arq reads a settings class's attributes (`WorkerSettings.__dict__`). The class is built when
# first asked for (`arq worker.app.WorkerSettings` imports this module, then gets the
# attribute), so importing this module reads no settings.
_ARQ_LANES = {"WorkerSettings": "live", "BulkWorkerSettings": "bulk"}
_ARQ_OPTIONS = (
    "functions",
    "queue_name",
    "redis_settings",
    "on_startup",
    "on_shutdown",
    "max_jobs",
    "job_timeout",
    "job_completion_wait",
    "max_tries",
    "job_serializer",
    "job_deserializer",
)


@functools.cache
def arq_settings(name: str) -> type:
    """`WorkerSettings` (live lane) or `BulkWorkerSettings`, for `arq worker.app.<name>`.

    `upscale worker` is the better way: one process serves both lanes. Both ways get the same
    lifecycle (heartbeat, reclaim, heal) and stop picking while nothing can be admitted.
    """
    options = worker_options(get_settings(), _ARQ_LANES[name])
    attrs = {k: options[k] for k in _ARQ_OPTIONS}
    return type(name, (), {"__doc__": arq_settings.__doc__, "__module__": __name__, **attrs})


def __getattr__(name: str) -> type:
    """`WorkerSettings` / `BulkWorkerSettings`, read from the settings on first use."""
    if name in _ARQ_LANES:
        return arq_settings(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class LaneWorkers:
    """One arq worker per lane in one process, sharing a runtime: a process serves both lanes,
    so it never idles while either has work; the flow control decides who calls first."""

    def __init__(self, settings: Settings, *, burst: bool = False, **overrides: Any) -> None:
        self.settings = settings
        self.ctx: dict[str, Any] = {"settings": settings, "process_owned": True}
        self.workers = [
            ResilientWorker(
                ctx=self.ctx, **{**worker_options(settings, lane), "burst": burst, **overrides}
            )
            for lane in QUEUES
        ]

    def handle_signal(self, sig: signal.Signals) -> None:
        rt: Runtime | None = self.ctx.get("runtime")
        if rt is not None:
            rt.draining = True  # picking never reopens, whatever the fleet's gate says
        for w in self.workers:
            w.handle_sig_wait_for_completion(sig)  # drain: running (paid) jobs finish

    async def async_run(self) -> None:
        """Serve both lanes; if one lane's worker dies, drain the other and exit non-zero."""
        rt = await _process_runtime(self.ctx)
        self.ctx["tasks"] = _background(rt, self.workers)
        if self.settings.ops.metrics_port:
            self.ctx["health_server"] = await serve_health(rt, self.settings.ops.metrics_port)
        log.info(
            "worker started",
            queues=[w.queue_name for w in self.workers],
            route=self.settings.upstream.route,
            max_jobs=self.settings.jobs.max_jobs,
        )
        tasks = [asyncio.create_task(w.async_run()) for w in self.workers]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = [t for t in done if not t.cancelled() and t.exception() is not None]
        if failed:
            exc = failed[0].exception()
            log.error("a lane's worker stopped; draining the other", error=repr(exc))
            self.handle_signal(signal.SIGTERM)
            await asyncio.gather(*tasks, return_exceptions=True)
            raise SystemExit(1)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        for w in self.workers:
            with contextlib.suppress(Exception):
                await w.close()
        await _teardown(self.ctx)


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
    configure_logging(settings.ops.log_format, settings.ops.log_level)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    asyncio.run(run_worker(settings, burst=burst))
