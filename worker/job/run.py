"""A run of a job: who it is (`Job`), what the ledger gave it at its start (`Run`), and the
run's frame: its lease, its time limit, and the way back to the queue without an attempt."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog
from arq import Retry

from worker import metrics
from worker.contract import JobSpec, JobState
from worker.keys import upstream_of
from worker.ledger import CallJournal, Fenced, PaidResult
from worker.ledger.transitions import Cancelled
from worker.runtime import Runtime
from worker.settings import Settings

log = structlog.get_logger("worker.job")

OUTAGE_WAIT_S = 5.0  # S3 / Redis away: ask again after this long
# What a run returns to arq (`worker.app.upscale`): the state it ended in, and why.
Reply = dict[str, Any]
FENCED = "fenced"  # not a job state: this run lost its lease, the job is another run's


@dataclass(frozen=True)
class Job:
    """One run of one job: what every step is given."""

    rt: Runtime
    spec: JobSpec
    id: str
    token: str  # this run's lease token (fencing: the ledger refuses another's writes)
    started: float  # monotonic

    @classmethod
    def new(cls, rt: Runtime, spec: JobSpec, job_id: str) -> Job:
        return cls(rt, spec, job_id, uuid.uuid4().hex, time.monotonic())

    @property
    def settings(self) -> Settings:
        return self.rt.settings

    def ms(self) -> int:
        """Milliseconds since the run started."""
        return ms_since(self.started)


@dataclass(frozen=True)
class Run:
    """What the ledger gave the run at its start: a paid result (or a pending upstream job) an
    earlier run left, and the journal of the job's latest call."""

    attempts: int
    paid: PaidResult | None
    journal: CallJournal | None

    @property
    def pending_slot(self) -> str:
        """The slot of the upstream job an earlier run left pending ('' if none)."""
        j = self.journal
        return j.token if j is not None and j.state == "pending" else ""

    @property
    def prefer(self) -> str:
        """The key a call of unknown outcome went to: asked again there, under its
        idempotency key ('' if none)."""
        j = self.journal
        return upstream_of(j.token) if j is not None and j.state in ("unknown", "sent") else ""


async def start(job: Job) -> Run | Reply:
    """Take the run lease. A job already final, or with no record, ends here (a `Reply`); one
    another live run holds goes back to arq for later."""
    st = await job.rt.ledger.start(job.id, job.token, job.settings.jobs.run_lease_s * 1000)
    if st.outcome == "final":
        return {"state": st.state, "note": "already final"}
    if st.outcome == "busy":  # another live run holds the lease: leave it alone
        raise Retry(defer=st.busy_ms / 1000 + 1)
    if st.outcome == "missing":
        log.warning("job has no ledger record; enqueue it with upscale-queue", job_id=job.id)
        return {"state": JobState.FAILED, "error": "no ledger record"}
    return Run(attempts=st.attempts, paid=st.paid, journal=st.journal)


@contextlib.asynccontextmanager
async def running(job: Job, run: Run) -> AsyncIterator[None]:
    """While the steps run: the process's heartbeat renews the lease, log lines name the job,
    and a worker that stops (SIGTERM, arq's cancel) hands the job back without an attempt."""
    structlog.contextvars.bind_contextvars(
        job_id=job.id, batch=job.spec.batch, source=job.spec.source.uri, attempt=run.attempts + 1
    )
    job.rt.runs[job.id] = job.token  # renewed by the process's heartbeat (`worker.leases`)
    try:
        yield
    except asyncio.CancelledError:
        with contextlib.suppress(Cancelled):  # cancelled meanwhile: nothing to hand back
            await asyncio.shield(hand_back(job, "shutdown", "the worker stopped"))
        raise
    finally:
        job.rt.runs.pop(job.id, None)
        structlog.contextvars.unbind_contextvars("job_id", "batch", "source", "attempt")


def time_limit(job: Job) -> asyncio.Timeout:
    """Beat arq's own timeout (which would end the job without a ledger update): the steps
    raise `TimeoutError` (an attempt) a little before it."""
    limit = job.settings.jobs.job_timeout_s
    return asyncio.timeout(max(1.0, limit - min(5.0, limit * 0.1)))


async def hand_back(job: Job, reason: str, detail: str, delay_s: float = 0.0) -> None:
    """Back to the queue without using an attempt. Raises `Cancelled` when the job was
    cancelled instead; a run that lost its lease has nothing to hand back."""
    try:
        await job.rt.ledger.wait(job.id, job.token, reason, detail, delay_s)
    except Cancelled:
        raise
    except Fenced:
        job.rt.fenced.add(job.id)  # the newer run owns arq's bookkeeping (`finish_job`)
        return
    metrics.JOB_WAITS.labels(reason.split(":", 1)[0]).inc()
    log.info("job waiting", reason=reason, retry_in_s=round(delay_s, 2))


def ms_since(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)
