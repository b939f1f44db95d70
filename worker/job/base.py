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
from worker.ledger.transitions import Cancelled
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
        except Cancelled:
            raise  # it ended instead: the run stops (`UpscaleJob.run`)
        except Fenced:
            self.rt.fenced.add(self.job_id)
            return
        metrics.JOB_WAITS.labels(reason.split(":", 1)[0]).inc()
        log.info("job waiting", reason=reason, retry_in_s=round(delay_s, 2))

    def _timing_fields(self) -> dict[str, str | int]:
        """The fields gathered on the way and the run's total time, written with the final
        state. The per-step times go to the metrics and the final log line, not the record:
        a final record stays small (it outlives the job by the ledger's retention)."""
        total = {"t_total_ms": self.timings["total"]} if "total" in self.timings else {}
        return {**self.fields, **total}

    async def _drop_staged(self) -> None:
        if self.staged is not None:
            with contextlib.suppress(Exception):  # best effort: a lifecycle rule covers the rest
                await self.rt.storage.delete(self.staged)
            self.staged = None


def _ms(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)
