"""What every step of a job shares: the run's identity and lease token, timings, the fields
written with the final state, and the way back to the queue."""

from __future__ import annotations

import contextlib
import time
import uuid

import structlog

from worker import metrics
from worker.contract import (
    JobSpec,
    S3Object,
)
from worker.ledger import Fenced
from worker.runtime import Runtime

log = structlog.get_logger("worker.job")

OUTAGE_WAIT_S = 5.0  # S3 / Redis away: ask again after this long


class JobBase:
    """A run's state, shared by its steps (`source`, `call`, `store`) and `UpscaleJob`."""

    def __init__(self, rt: Runtime, spec: JobSpec, job_id: str) -> None:
        self.rt = rt
        self.s = rt.settings
        self.spec = spec
        self.job_id = job_id
        self.token = uuid.uuid4().hex  # this run's lease token (fencing)
        self.timings: dict[str, int] = {}
        self.started = time.monotonic()
        self.staged: S3Object | None = None
        self.slot: str = ""  # the admitted slot of the call in flight / pending
        self.prefer = ""  # the key an unknown call went to: ask it again there
        self.source_format: str | None = None  # known when this run read the source
        self.fields: dict[str, str | int] = {}  # record fields written with the final state

    async def _hand_back(self, reason: str, detail: str, delay_s: float = 0.0) -> None:
        """Back to the queue without using an attempt."""
        try:
            await self.rt.ledger.wait(self.job_id, self.token, reason, detail, delay_s)
        except Fenced:
            return
        metrics.JOB_WAITS.labels(reason.split(":", 1)[0]).inc()
        log.info("job waiting", reason=reason, retry_in_s=round(delay_s, 2))

    def _timing_fields(self) -> dict[str, str | int]:
        """Timings and the fields gathered on the way, written with the final state."""
        return {**self.fields, **{f"t_{k}_ms": v for k, v in self.timings.items()}}

    async def _drop_staged(self) -> None:
        if self.staged is not None:
            with contextlib.suppress(Exception):  # best effort: a lifecycle rule covers the rest
                await self.rt.storage.delete(self.staged)
            self.staged = None


def _ms(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)
