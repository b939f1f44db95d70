"""A direct-route submit whose answer never came: what the job does next.

Ideogram takes no idempotency key, and a submit whose answer was lost (a connection dropped,
a worker killed while it was on the wire) left no generation id to read: the upstream may be
running it and will bill it. Nothing published finds it again (its docs: "If a submission
fails before you receive a generation_id, you can't tell from that request whether it
started"). The call is counted as possibly billed; then, by `UPSCALE_IDEOGRAM_LOST_SUBMIT`:

- `fail` (default): the job fails `SubmitLost`, never submitted again by the worker: a person
  decides (`upscale retry` buys the image again). The record remembers which call it gave up
  on (`lost_call`), so the retry's run knows the call was judged and may submit.
- `resubmit`: a new submission once `UPSCALE_IDEOGRAM_GENERATION_S` has passed since the lost
  one left (it can no longer be running; it may have been billed: an image bought twice).
"""

from __future__ import annotations

import time

from worker.job.run import Job, log
from worker.keys import Keys, upstream_of
from worker.ledger import CallJournal
from worker.outcomes import JobFailed, JobWaits
from worker.redis_conn import patiently

ERROR_CLASS = "SubmitLost"
LOST_CALL_FIELD = "lost_call"  # on the job's record: the call number a `fail` gave up on


class SubmitLost(JobFailed):
    """The job fails: its submit's outcome cannot be learnt and it may have been billed."""

    def __init__(self, call: int) -> None:
        super().__init__(
            ERROR_CLASS,
            f"call {call} was submitted but its answer (the generation id) never came: it may "
            "run and be billed (counted as possibly billed); Ideogram takes no idempotency "
            "key, so it is not submitted again automatically: `upscale retry` buys it again",
        )
        self.call = call

    @property
    def record_fields(self) -> dict[str, str]:
        """Written with the failure, in the same step (a retry's run reads it back)."""
        return {LOST_CALL_FIELD: str(self.call)}


async def after_lost(job: Job, journal: CallJournal) -> None:
    """Return when a new submission may be made; otherwise raise what the policy says."""
    if await _retried(job, journal.n):
        log.info("a lost submit judged earlier; retried by request: submitting", call=journal.n)
        return
    s = job.rt.flow.pool_upstream(upstream_of(journal.token)).upstream
    if s.ideogram_lost_submit == "fail":
        raise SubmitLost(journal.n)
    wait_s = journal.sent_at / 1000 + s.ideogram_generation_s - time.time()
    if wait_s > 0:  # it may still be running: a submission now could buy it twice at once
        raise JobWaits(
            "submit_lost",
            wait_s,
            f"call {journal.n}'s answer never came: it may still run; a new submission after "
            f"{s.ideogram_generation_s:.0f} s",
        )
    log.warning("submitting again after a lost submit (it may have been billed)", call=journal.n)


async def _retried(job: Job, call: int) -> bool:
    """`upscale retry` of a job failed `SubmitLost` for this very call."""
    redis = job.rt.ledger.redis
    value = await patiently(
        lambda: redis.hget(Keys.job(job.id), LOST_CALL_FIELD),  # type: ignore[arg-type,return-value]  # redis-py's async stubs
        what="lost_call",
    )
    return value is not None and int(value) == call
