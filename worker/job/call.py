"""Step 2: admission (before the source is read: a waiting job reads nothing), the paid call
and, for an async (202) upstream job, its polling. The call is journaled before it leaves and
its answer saved with its spend before anything else."""

from __future__ import annotations

import asyncio
import re
import time

import httpx

from worker import metrics
from worker.flow import ASK_AGAIN_S, PICKUP_LEAD_S, TIMED_DENIALS, Admitted, Denied
from worker.job.base import OUTAGE_WAIT_S, JobBase, _ms, log
from worker.keys import upstream_of
from worker.ledger import Fenced, KeyPaused, PaidOutput, PaidResult
from worker.outcomes import JobFailed, JobWaits, outcome_for
from worker.upstream import errors as ue
from worker.upstream.base import CallResult, ImageInput, UpscaleRequest, Upstream

# Short denials (rate, in-flight cap) are waited out in the job; longer ones hand it back.
INLINE_WAIT_MAX_S = 3.0
INLINE_WAIT_TOTAL_S = 60.0
BUILD_INLINE_MAX_BYTES = 256 * 1024  # larger inline images are encoded off the event loop
# An upstream 400 that says it could not get the reference image (URL mode).
_FETCH_FAILED = re.compile(r"fetch|download|retriev|unreachable|could not (get|load|read)", re.I)


class CallStep(JobBase):
    async def _admit(self) -> Admitted:
        """Admission before the source is read: a job that must wait reads and decodes
        nothing. Short waits happen here (woken by a freed slot, or at the known time the
        window frees one); longer ones hand the job back to its queue."""
        t0 = time.monotonic()
        with self.rt.waker.watching(self.job_id):
            return await self._admit_watched(t0)

    async def _admit_watched(self, t0: float) -> Admitted:
        flow, waker = self.rt.flow, self.rt.waker
        while True:
            decision = await flow.admit(
                batch=self.spec.batch, lane=self.spec.lane, job_id=self.job_id, prefer=self.prefer
            )
            if isinstance(decision, Admitted):
                if time.monotonic() - t0 > 0.001:
                    self.timings["admit_wait"] = _ms(t0)
                return decision
            assert isinstance(decision, Denied)
            if time.monotonic() - t0 < INLINE_WAIT_TOTAL_S:
                if (ask_again_s := ASK_AGAIN_S.get(decision.reason)) is not None:
                    await waker.wait(min(decision.wait_s, ask_again_s), self.job_id)
                    continue
                if decision.reason in TIMED_DENIALS and decision.wait_s <= INLINE_WAIT_MAX_S:
                    await asyncio.sleep(decision.wait_s)  # room comes back then
                    continue
            wait_s = decision.wait_s
            if decision.reason in TIMED_DENIALS:
                wait_s = max(0.0, wait_s - PICKUP_LEAD_S)
            raise JobWaits(decision.reason, wait_s, f"waiting: {decision.reason}")

    async def _call(self, image: ImageInput, admitted: Admitted) -> PaidResult:
        ledger, flow = self.rt.ledger, self.rt.flow
        upstream = self.rt.upstream(admitted.upstream)
        price = flow.member(admitted.upstream).price_micros
        try:
            # Encoded before it is journaled: between the journal's check of the key's pause
            # and the request leaving there is only the send (a 402 meanwhile stops it).
            request = await self._build(upstream, image)
            journal = await ledger.call_begin(self.job_id, self.token, admitted.token, price)
        except BaseException:
            await asyncio.shield(flow.release(admitted.token))
            raise
        self.slot = admitted.token
        if (reason := flow.paused_here(admitted.upstream)) is not None:
            # a 402/401/403 reached this process while the call was journaled: not sent
            await ledger.call_refused(self.job_id, admitted.token, None)
            raise KeyPaused(reason)
        t0 = time.monotonic()
        async with flow.hold(admitted.token):
            try:
                result = await upstream.send(request, journal.idem)
            except ue.OutcomeUnknown as err:
                metrics.UPSTREAM_CALLS.labels("unknown").inc()
                await self._tell_flow(admitted.upstream, admitted.token, err)
                await ledger.call_unknown(self.job_id, admitted.token)
                raise
            except ue.UpstreamError as err:
                metrics.UPSTREAM_CALLS.labels(str(err.status or "error")).inc()
                await self._tell_flow(admitted.upstream, admitted.token, err)
                await ledger.call_refused(self.job_id, admitted.token, err.request_id)
                log.warning(
                    "upstream call failed",
                    status=err.status,
                    error=type(err).__name__,
                    request_id=err.request_id,
                    latency_ms=_ms(t0),
                    detail=err.message,
                    kind=admitted.kind,
                )
                if (
                    isinstance(err, ue.InvalidRequest)
                    and image.url
                    and _FETCH_FAILED.search(err.message)
                ):
                    await self._explain_fetch_failure(image.url, err)
                raise
            except BaseException:  # cancelled mid-call, or a bug: it may have been billed
                await asyncio.shield(ledger.call_unknown(self.job_id, admitted.token))
                raise
        self.timings["call"] = _ms(t0)
        metrics.UPSTREAM_CALLS.labels("202" if result.pending_id else "200").inc()
        metrics.UPSTREAM_LATENCY.observe(time.monotonic() - t0)
        paid = await self._save_paid(result, t0)
        status = 202 if result.pending_id else 200
        # off the job's path: the money is saved, and flow state is advisory
        self.rt.in_background(
            flow.observe(admitted.upstream, result.rate, status, slot=admitted.token),
            "could not report call outcome",
        )
        await self._drop_staged()
        return paid

    async def _build(self, upstream: Upstream, image: ImageInput) -> httpx.Request:
        req = UpscaleRequest(
            image=image, params=self.spec.params, model=self.spec.model, tag=self.spec.batch
        )
        if image.data is not None and len(image.data) > BUILD_INLINE_MAX_BYTES:
            return await asyncio.to_thread(upstream.build, req)  # base64 + JSON of megabytes
        return upstream.build(req)

    async def _tell_flow(self, upstream: str, slot: str, exc: ue.UpstreamError) -> None:
        """Feed a call's failure into the fleet's flow control while its slot is still held, so
        no other call slips in before the pause / cooldown is in force."""
        o = outcome_for(exc, pause_poll_s=self.s.flow.pause_poll_s, outage_wait_s=OUTAGE_WAIT_S)
        flow = self.rt.flow
        try:
            if o.effect == "pause" and isinstance(exc, ue.PauseError):  # first: calls stop now
                flow.pause_seen(upstream, exc.pause_reason)  # this process, before any await
                await flow.report_paused(upstream, exc.pause_reason, exc.describe())  # type: ignore[arg-type]  # PauseReason values
            if exc.rate.known and not isinstance(exc, ue.RateLimited):
                await flow.observe(upstream, exc.rate, exc.status or 0)
            if o.effect == "cooldown" and isinstance(exc, ue.RateLimited):
                learned = await flow.observe(upstream, exc.rate, 429, slot=slot)
                await flow.report_rate_limited(upstream, exc.retry_after, ease=not learned)
            elif o.effect == "server_error":
                await flow.report_server_error(upstream)
        except Exception as e:  # flow state is advisory; the job's own outcome must be written
            log.warning("could not report to flow control", error=type(e).__name__)

    async def _save_paid(self, result: CallResult, t0: float) -> PaidResult:
        """Persist what a successful submit or poll returned, with its spend, first."""
        billed = result.pending_id is None
        price = self.rt.flow.member(upstream_of(self.slot)).price_micros
        cost = price * len(result.outputs) if billed else 0
        paid = PaidResult(
            request_id=result.request_id,
            pending_id=result.pending_id,
            outputs=[PaidOutput(**o.__dict__) for o in result.outputs],
            cost_micros=cost,
            at=time.time(),
        )
        saved = await self.rt.ledger.call_answered(
            self.job_id, self.slot, paid, replayed=result.replayed, token=self.token
        )
        metrics.SPEND_USD.inc(cost / 1e6)
        log.info(
            "upstream call ok",
            status=202 if result.pending_id else 200,
            request_id=result.request_id,
            latency_ms=_ms(t0),
            cost_usd=cost / 1e6,
            replayed=result.replayed,
            saved=saved,
            rate_remaining=result.rate.remaining,
        )
        if saved in ("stale", "fenced"):
            # the money is on the books; a run that lost its lease writes nothing more (the
            # newer run, or the next, stores the saved result)
            raise Fenced(self.job_id)
        return paid

    async def _explain_fetch_failure(self, url: str, err: ue.UpstreamError) -> None:
        """The upstream could not fetch the reference image: an S3 outage waits; a URL that
        works from here but not from the upstream is a setting to fix."""
        try:
            async with self.rt.downloads.stream(
                "GET", url, headers={"Range": "bytes=0-0"}, timeout=10
            ) as resp:
                status = resp.status_code
        except httpx.HTTPError as e:
            raise JobWaits(
                "storage", OUTAGE_WAIT_S, f"S3 unreachable ({type(e).__name__})"
            ) from None
        if status >= 500:
            raise JobWaits("storage", OUTAGE_WAIT_S, f"S3 answered HTTP {status}")
        if status < 300:
            endpoint = self.s.s3.endpoint_url or "S3"
            raise JobFailed(
                "SourceUnreachable",
                f"the upstream could not fetch the source from {endpoint} ({err.describe()}), "
                "which this worker reaches: the endpoint is not reachable from the upstream; "
                "set UPSCALE_IMAGE_MODE=data_url to send the image bytes instead",
            )

    async def _poll(self, paid: PaidResult) -> PaidResult:
        """Poll until the upstream job ends (at most every `async_poll_interval_s`). A failed
        poll is not a failed job: polling goes on while the upstream keeps the job."""
        pending = str(paid.pending_id)
        interval = self.s.upstream.async_poll_interval_s
        deadline = self.started + self.s.jobs.job_timeout_s * 0.8
        errors = 0
        while True:
            await asyncio.sleep(interval * min(2**errors, 8))
            try:
                result = await self.rt.upstream(upstream_of(self.slot)).poll(pending)
                errors = 0
            except ue.UpstreamJobLost:
                await self.rt.ledger.call_unknown(self.job_id, self.slot, drop_pending=True)
                raise
            except ue.UpstreamJobFailed as err:
                await self.rt.ledger.call_refused(
                    self.job_id, self.slot, err.request_id, drop_pending=True
                )
                raise
            except ue.UpstreamError as err:
                errors += 1
                log.info("poll failed; polling on", error=type(err).__name__, detail=err.message)
                result = CallResult(request_id=None, pending_id=pending)
            if result.pending_id is None:
                return await self._save_paid(result, time.monotonic())
            if time.monotonic() + interval > deadline:
                raise JobWaits("upstream_pending", 0, f"upstream job {pending} still running")
