"""arq's `Worker`, made ours where it matters: its poll loop rides out a Redis outage (running
jobs are never cancelled because a poll failed; a Redis that refuses writes is an outage too),
and it picks due jobs with one script (`claim.lua`) instead of arq's round trips per candidate.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from functools import partial
from typing import Any

import structlog
from arq import Worker
from redis.commands.core import AsyncScript

from worker.keys import ARQ_IN_PROGRESS_PREFIX, PREFIX, first_of
from worker.ledger.reads import text
from worker.lua import register
from worker.redis_conn import REDIS_DOWN, note_away, patiently
from worker.runtime import Runtime

log = structlog.get_logger("worker.app")


class ResilientWorker(Worker):
    """An arq worker whose poll loop survives Redis going away: it waits (with backoff) and
    goes on; jobs already running are never cancelled because a poll failed. It picks jobs
    with one script (`claim.lua`) instead of arq's round trips per candidate."""

    _claim: AsyncScript | None = None

    async def _poll_iteration(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._iteration()
                return
            except REDIS_DOWN as e:
                rt: Runtime | None = self.ctx.get("runtime")
                if rt is not None:
                    rt.redis_ok = False
                kind = note_away(e, "poll")
                log.warning(
                    "redis unavailable; poll loop waiting", error=type(e).__name__, kind=kind
                )
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    async def finish_job(self, job_id: str, *args: Any, **kwargs: Any) -> None:
        """arq's bookkeeping after a run (its in-progress key, retry count, queue entry): waited
        out like the ledger's writes, or a refused write would leave the job claimed until its
        in-progress key expires. A run that lost its lease does none: reclaim put the job back
        in its queue, and its claim, queue entry and payload are the newer run's (removing them
        would strand a job no run holds)."""
        rt: Runtime | None = self.ctx.get("runtime")
        if rt is not None and job_id in rt.fenced:
            rt.fenced.discard(job_id)
            return
        finish = super().finish_job
        await patiently(lambda: finish(job_id, *args, **kwargs), what="arq finish")

    async def _iteration(self) -> None:
        """arq's poll iteration (0.28), but the pick is one atomic script (and finished tasks
        are cleared before it, so a job handed back here can be claimed here again)."""
        for job_id, t in list(self.tasks.items()):
            if t.done():
                del self.tasks[job_id]
                t.result()  # errors in run_job propagate, as in arq
        if self.allow_pick_jobs:
            await self._claim_jobs()
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        await self.heart_beat()

    async def _claim_jobs(self) -> None:
        """Take as many due jobs as this worker has free slots, in one round trip. arq walks
        the due ids with several round trips each, so with N processes every job running
        elsewhere is looked at N times per poll: most of a busy worker's Redis traffic."""
        free = self.max_jobs - self.job_counter
        if self.burst and self.max_burst_jobs >= 0:
            free = min(free, self.max_burst_jobs - self._jobs_started())
        if free <= 0:
            return
        if self._claim is None:
            self._claim = register(self.pool, "claim")
        reply = await self._claim(
            keys=[self.queue_name, first_of(self.queue_name)],
            args=[
                PREFIX,
                ARQ_IN_PROGRESS_PREFIX,
                int(self.in_progress_timeout_s * 1000),
                free,
                self.queue_read_limit,
            ],
        )
        for i in range(0, len(reply), 2):
            job_id, score = text(reply[i]), int(float(reply[i + 1]))
            running = self.tasks.get(job_id)
            if running is not None and not running.done():
                # Its previous run here is still ending (a hand-back whose bookkeeping has
                # just re-queued it, or a run whose in-progress key expired): give the claim
                # back, or the job sits claimed by nobody until that key expires.
                await patiently(
                    partial(self.pool.delete, ARQ_IN_PROGRESS_PREFIX + job_id), what="unclaim"
                )
                continue
            await self.sem.acquire()  # never waits: it holds max_jobs + 1 permits
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def close(self) -> None:
        # arq's close() re-raises a job task's CancelledError (a job picked as the worker
        # stops): collect them instead, and leave Redis alone if it is away.
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if self._pool is None:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        with contextlib.suppress(*REDIS_DOWN):
            await self.pool.delete(self.health_check_key)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        with contextlib.suppress(*REDIS_DOWN):
            await self.pool.close(close_connection_pool=True)
        self._pool = None
