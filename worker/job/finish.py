"""How a run ends: the final state with its record fields (stored, or found stored), or what
the outcome table (`worker.outcomes`) says an exception means: fail, wait (back to the queue,
no attempt used) or attempt (backoff; failed at `max_attempts`). A run that lost its lease
writes nothing; a job cancelled meanwhile ends `cancelled`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from arq import Retry

from worker import metrics
from worker.callbacks import queue_batch_notice_if_done, queue_job_notice
from worker.contract import JobState
from worker.job.destination import Found
from worker.job.lost_submit import SubmitLost
from worker.job.run import FENCED, OUTAGE_WAIT_S, Job, Reply, hand_back, log
from worker.job.source import Source
from worker.job.store import Stored
from worker.ledger import Fenced
from worker.ledger.transitions import Cancelled
from worker.outcomes import JobSkipped, outcome_for
from worker.upstream import errors as ue

Final = Literal[JobState.SUCCEEDED, JobState.FAILED, JobState.SKIPPED, JobState.CANCELLED]
Fields = Mapping[str, str | int | float | None]


async def done(job: Job, outcome: Stored | Found) -> Reply:
    """The output is at the destination: stored by this run, or found there."""
    if isinstance(outcome, Found):
        return await adopt(job, outcome)
    out, bought = outcome.output, outcome.bought
    timings = {**bought.timings_ms, "store": outcome.store_ms, "total": job.ms()}
    await _final(
        job,
        JobState.SUCCEEDED,
        {
            "output_bytes": out.stored.size,
            "output_etag": out.stored.etag,
            "output_resolution": out.image.resolution,
            "output_content_type": out.image.content_type,
            "seed": outcome.seed,
            "dest": out.dest.uri,  # also when an earlier run stored it elsewhere
            "output_note": out.note or None,
            "error": None,
            "error_class": None,
            **(bought.source.fields if bought.source is not None else {}),
            # the per-step times go to the log line, not the record: a final record stays
            # small (it outlives the job by the ledger's retention)
            "t_total_ms": timings["total"],
        },
    )
    log.info(
        "job succeeded",
        dest=out.dest.uri,
        bytes=out.stored.size,
        resolution=out.image.resolution,
        timings_ms=timings,
    )
    return await _ended(job, JobState.SUCCEEDED, dest=out.dest.uri, bytes=out.stored.size)


async def adopt(job: Job, found: Found) -> Reply:
    """The destination holds this job's output (stored by an earlier or another run): the
    job ends with it, no call, nothing written."""
    rec = await job.rt.ledger.get(job.id)
    state: Final = JobState.SUCCEEDED if rec and rec.billed_calls else JobState.SKIPPED
    dest, head = found.dest, found.head
    await _final(
        job,
        state,
        {
            "output_bytes": head.size,
            "output_etag": head.etag,
            "output_resolution": head.metadata.get("upscale-resolution"),
            "output_content_type": head.content_type,
            "dest": dest.uri,  # where it is (another extension than asked, maybe)
            "note": "destination already holds this job's output",
        },
    )
    log.info("output already exists", state=state, dest=dest.uri)
    return await _ended(job, state, dest=dest.uri)


async def settle(job: Job, exc: Exception, source: Source | None) -> Reply:
    """End the run as the outcome table's row for `exc` says. Raises `Retry` (arq runs the
    job again later) for wait / attempt."""
    try:
        return await _settle(job, exc, source.fields if source is not None else {})
    except Cancelled:
        log.info("job cancelled (upscale cancel); this run stops")
        return await _ended(job, JobState.CANCELLED)
    except Fenced:  # reclaimed after a stall: the newer run decides
        job.rt.fenced.add(job.id)  # and owns arq's bookkeeping of the job (`finish_job`)
        log.warning("run lost its lease (reclaimed); it stops without writing")
        return {"state": FENCED}


async def _settle(job: Job, exc: Exception, fields: Fields) -> Reply:
    if isinstance(exc, Fenced):  # `Cancelled` too: what the ledger refused, not a failure
        raise exc
    s = job.settings
    o = outcome_for(exc, pause_poll_s=s.flow.pause_poll_s, outage_wait_s=OUTAGE_WAIT_S)
    if o.action == "attempt" and not isinstance(exc, ue.UpstreamError | TimeoutError):
        log.error("unexpected error; counted as a failed attempt", exc_info=exc)
    if o.action == "fail":
        if isinstance(exc, JobSkipped):
            await _final(job, JobState.SKIPPED, {"note": o.message, **fields})
            log.warning("job skipped", error_class=o.error_class, error=o.message)
            return await _ended(job, JobState.SKIPPED, error=o.message)
        # a lost submit's call number, written with the failure (what `upscale retry` reads)
        extra = exc.record_fields if isinstance(exc, SubmitLost) else {}
        await _final(
            job,
            JobState.FAILED,
            {"error_class": o.error_class, "error": o.message, **fields, **extra},
        )
        log.warning("job failed", error_class=o.error_class, error=o.message)
        return await _ended(job, JobState.FAILED, error=o.message)
    if o.action == "wait":
        await hand_back(job, o.wait_reason, o.message, o.wait_s)
        raise Retry()
    failed, attempts, delay = await job.rt.ledger.attempt_failed(
        job.id,
        job.token,
        o.error_class,
        o.message,
        max_attempts=s.jobs.max_attempts,
        backoff_base_s=s.jobs.backoff_base_s,
        backoff_max_s=s.jobs.backoff_max_s,
    )
    if failed:
        log.warning("job failed", error_class=o.error_class, error=o.message, attempts=attempts)
        return await _ended(job, JobState.FAILED, error=o.message)
    metrics.JOB_WAITS.labels("backoff").inc()
    log.info("attempt failed; backing off", error_class=o.error_class, retry_in_s=delay)
    raise Retry()


async def _final(job: Job, state: Final, fields: Fields) -> None:
    """Write the final state with its fields (fenced: a run that lost its lease cannot)."""
    await job.rt.ledger.finish(job.id, job.token, state, fields)


async def _ended(job: Job, state: Final, **details: str | int) -> Reply:
    """Count the final state and queue the job's completion notices (their own arq jobs, off
    the upstream path; best effort: the job itself is done and recorded)."""
    metrics.JOBS_FINISHED.labels(state).inc()
    redis: Any = job.rt.redis  # an ArqRedis (worker.redis_conn.connect)
    try:
        if job.spec.callback_url:
            await queue_job_notice(redis, job.id)
        if job.spec.batch:
            await queue_batch_notice_if_done(redis, job.spec.batch)
    except Exception as e:
        log.warning("could not queue completion notice", error=str(e))
    return {"state": state, **details}
