"""The job: start (take the run lease) -> read the source -> call -> store, for one object.

Every exception ends in one row of `worker.outcomes` (fail / wait / attempt). Money rules: the
call is journaled before it leaves; a paid answer is saved with its spend before anything else
(and waits out a Redis outage); an unknown outcome counts as possibly billed and is asked
again under the same idempotency key. A run that lost its lease (reclaimed after a stall)
cannot write: the ledger's scripts check its token.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from arq import Retry

from worker import metrics
from worker.callbacks import queue_batch_notice_if_done, queue_job_notice
from worker.contract import FINAL_STATES
from worker.job.base import OUTAGE_WAIT_S, log
from worker.job.call import CallStep
from worker.job.store import StoreStep
from worker.keys import upstream_of
from worker.ledger import Fenced, StartResult
from worker.ledger.transitions import Cancelled, FinalState
from worker.outcomes import JobSkipped, outcome_for
from worker.upstream import errors as ue


class UpscaleJob(CallStep, StoreStep):
    """One run of one job: the steps in order, and the outcome table applied to what they raise."""

    async def run(self) -> dict[str, Any]:
        self._look_for_output()  # the destination's HEAD, beside the run's start
        try:
            return await self._run()
        finally:
            self._forget_output()

    async def _run(self) -> dict[str, Any]:
        st = await self.rt.ledger.start(self.job_id, self.token, self.s.jobs.run_lease_s * 1000)
        if st.outcome == "final":
            return {"state": st.state, "note": "already final"}
        if st.outcome == "busy":  # another live run holds the lease: leave it alone
            raise Retry(defer=st.busy_ms / 1000 + 1)
        if st.outcome == "missing":
            log.warning(
                "job has no ledger record; enqueue it with upscale-queue", job_id=self.job_id
            )
            return {"state": "failed", "error": "no ledger record"}
        structlog.contextvars.bind_contextvars(
            job_id=self.job_id,
            batch=self.spec.batch,
            source=self.spec.source.uri,
            attempt=st.attempts + 1,
        )
        self.rt.runs[self.job_id] = self.token  # renewed by the process's heartbeat
        try:
            try:
                # Beat arq's own timeout (which would end the job without a ledger update).
                limit = self.s.jobs.job_timeout_s
                async with asyncio.timeout(max(1.0, limit - min(5.0, limit * 0.1))):
                    out = await self._steps(st)
            except asyncio.CancelledError:
                with contextlib.suppress(Cancelled):  # cancelled meanwhile: nothing to hand back
                    await asyncio.shield(self._hand_back("shutdown", "the worker stopped"))
                raise
            except Cancelled:
                log.info("job cancelled (upscale cancel); this run stops without a call")
                out = {"state": "cancelled"}
            except Fenced:
                self.rt.fenced.add(self.job_id)
                log.warning("run lost its lease (reclaimed); it stops without writing")
                return {"state": "fenced"}
            except Exception as exc:
                try:
                    out = await self._settle(exc)
                except Cancelled:
                    log.info("job cancelled (upscale cancel) after its attempt")
                    out = {"state": "cancelled"}
                except Fenced:  # reclaimed while it failed: the newer run decides
                    self.rt.fenced.add(self.job_id)
                    log.warning("run lost its lease (reclaimed); it stops without writing")
                    return {"state": "fenced"}
        finally:
            self.rt.runs.pop(self.job_id, None)
            await self._drop_staged()
            structlog.contextvars.unbind_contextvars("job_id", "batch", "source", "attempt")
        await self._after_final(str(out.get("state", "")))
        return out

    async def _steps(self, st: StartResult) -> dict[str, Any]:
        paid = st.paid
        if st.journal is not None and st.journal.state == "pending":
            self.slot = st.journal.token
        if st.journal is not None and st.journal.state in ("unknown", "sent"):
            self.prefer = upstream_of(st.journal.token)
        if paid is None:
            done = await self._already_stored()
            if done is not None:
                return done
            admitted = await self._admit()
            try:
                image = await self._read_source(admitted.upstream)
            except BaseException:
                await asyncio.shield(self.rt.flow.release(admitted.token))
                raise
            paid = await self._call(image, admitted)
        elif paid.pending_id:
            log.info("resuming a pending upstream job", pending_id=paid.pending_id)
        else:
            log.info("resuming from a paid result: no new upstream call")
        if paid.pending_id:
            paid = await self._poll(paid)
        return await self._store(paid)

    async def _settle(self, exc: Exception) -> dict[str, Any]:
        """Apply the outcome table's row for `exc`. Raises `Retry` for wait / attempt."""
        o = outcome_for(exc, pause_poll_s=self.s.flow.pause_poll_s, outage_wait_s=OUTAGE_WAIT_S)
        if o.action == "attempt" and not isinstance(exc, ue.UpstreamError | TimeoutError):
            log.error("unexpected error; counted as a failed attempt", exc_info=exc)
        ledger = self.rt.ledger
        if o.action == "fail":
            state: FinalState = "skipped" if isinstance(exc, JobSkipped) else "failed"
            fields = {"note": o.message} if state == "skipped" else {}
            if state == "failed":
                fields = {"error_class": o.error_class, "error": o.message}
            await ledger.finish(self.job_id, self.token, state, {**fields, **self._timing_fields()})
            log.warning(f"job {state}", error_class=o.error_class, error=o.message)
            return {"state": state, "error": o.message}
        if o.action == "wait":
            await self._hand_back(o.wait_reason, o.message, o.wait_s)
            raise Retry()
        failed, attempts, delay = await ledger.attempt_failed(
            self.job_id,
            self.token,
            o.error_class,
            o.message,
            max_attempts=self.s.jobs.max_attempts,
            backoff_base_s=self.s.jobs.backoff_base_s,
            backoff_max_s=self.s.jobs.backoff_max_s,
        )
        if failed:
            log.warning("job failed", error_class=o.error_class, error=o.message, attempts=attempts)
            return {"state": "failed", "error": o.message}
        metrics.JOB_WAITS.labels("backoff").inc()
        log.info("attempt failed; backing off", error_class=o.error_class, retry_in_s=delay)
        raise Retry()

    async def _after_final(self, state: str) -> None:
        """Count it and queue completion notices (their own arq job, off the upstream path)."""
        if state not in FINAL_STATES:
            return
        metrics.JOBS_FINISHED.labels(state).inc()
        redis: Any = self.rt.redis  # an ArqRedis (worker.redis_conn.connect)
        try:
            if self.spec.callback_url:
                await queue_job_notice(redis, self.job_id)
            if self.spec.batch:
                await queue_batch_notice_if_done(redis, self.spec.batch)
        except Exception as e:  # the job itself is done and recorded; a notice is best effort
            log.warning("could not queue completion notice", error=str(e))
