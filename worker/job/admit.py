"""Admission: a slot for the call, before the source is read (a job that must wait reads and
decodes nothing). Short waits happen here (woken by a freed slot, or at the known time the
window frees one); longer ones hand the job back to its queue (`JobWaits`)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from worker.flow import ASK_AGAIN_S, PICKUP_LEAD_S, TIMED_DENIALS, Admitted, Denied
from worker.job.run import Job, ms_since
from worker.outcomes import JobWaits

# Short denials (rate, in-flight cap) are waited out in the job; longer ones hand it back.
INLINE_WAIT_MAX_S = 3.0
INLINE_WAIT_TOTAL_S = 60.0


@dataclass(frozen=True)
class Slot:
    """An admitted call: its slot in the fleet's flow control, and how long it waited."""

    admitted: Admitted
    wait_ms: int | None  # how long admission took (None: under a millisecond)

    @property
    def token(self) -> str:
        return self.admitted.token

    @property
    def upstream(self) -> str:
        return self.admitted.upstream


async def admit(job: Job, *, prefer: str = "") -> Slot:
    """A slot on the first key of the pool with room (`prefer` first: the key an unknown call
    went to). Raises `JobWaits` when the wait is longer than this run should spend."""
    t0 = time.monotonic()
    flow, waker = job.rt.flow, job.rt.waker
    with waker.watching(job.id):
        while True:
            decision = await flow.admit(
                batch=job.spec.batch, lane=job.spec.lane, job_id=job.id, prefer=prefer
            )
            if isinstance(decision, Admitted):
                waited = time.monotonic() - t0 > 0.001
                return Slot(decision, ms_since(t0) if waited else None)
            await _wait_inline(job, decision, t0)


async def _wait_inline(job: Job, decision: Denied, t0: float) -> None:
    """Wait out a short denial here, or hand the job back (`JobWaits`)."""
    if time.monotonic() - t0 < INLINE_WAIT_TOTAL_S:
        if (ask_again_s := ASK_AGAIN_S.get(decision.reason)) is not None:
            await job.rt.waker.wait(min(decision.wait_s, ask_again_s), job.id)
            return
        if decision.reason in TIMED_DENIALS and decision.wait_s <= INLINE_WAIT_MAX_S:
            await asyncio.sleep(decision.wait_s)  # room comes back then
            return
    wait_s = decision.wait_s
    if decision.reason in TIMED_DENIALS:
        wait_s = max(0.0, wait_s - PICKUP_LEAD_S)
    raise JobWaits(decision.reason, wait_s, f"waiting: {decision.reason}")


async def release(job: Job, slot: Slot) -> None:
    """Give back a slot that made no call (and its budget reservation), even while the run is
    being cancelled."""
    await asyncio.shield(job.rt.flow.release(slot.token))
