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
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import structlog
from arq import Retry

from worker import metrics, output
from worker.callbacks import queue_batch_notice_if_done, queue_job_notice
from worker.contract import (
    STAGING_PREFIX,
    JobSpec,
    S3Object,
    prompt_hash,
    s3_key_quote,
)
from worker.flow import PICKUP_LEAD_S, TIMED_DENIALS, Admitted, Denied
from worker.images import ImageInfo, prepare, validate
from worker.keys import Keys, upstream_of
from worker.ledger import Fenced, KeyPaused, PaidOutput, PaidResult, StartResult
from worker.ledger.transitions import FinalState
from worker.outcomes import JobFailed, JobSkipped, JobWaits, outcome_for
from worker.results import DownloadFailed, ResultRejected, stream_b64, stream_url
from worker.runtime import Runtime
from worker.storage import (
    AccessDenied,
    Head,
    SourceMissing,
    StorageRejected,
    StorageUnavailable,
)
from worker.upstream import errors as ue
from worker.upstream.base import CallResult, ImageInput, UpscaleRequest

log = structlog.get_logger("worker.job")

META_JOB_ID = "upscale-job-id"
# Short denials (rate, in-flight cap) are waited out in the job; longer ones hand it back.
INLINE_WAIT_MAX_S = 3.0
INLINE_WAIT_TOTAL_S = 60.0
QUEUED_RECHECK_S = 0.5  # behind others in line: ask again this often, or when a slot frees

DOWNLOAD_TRIES = 3
OUTAGE_WAIT_S = 5.0
# An upstream 400 that says it could not get the reference image (URL mode).
_FETCH_FAILED = re.compile(r"fetch|download|retriev|unreachable|could not (get|load|read)", re.I)


class UpscaleJob:
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

    # -- the run ------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
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
                await asyncio.shield(self._hand_back("shutdown", "the worker stopped"))
                raise
            except Fenced:
                log.warning("run lost its lease (reclaimed); it stops without writing")
                return {"state": "fenced"}
            except Exception as exc:
                try:
                    out = await self._settle(exc)
                except Fenced:  # reclaimed while it failed: the newer run decides
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

    # -- outcomes -----------------------------------------------------------------------
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

    async def _after_final(self, state: str) -> None:
        """Count it and queue completion notices (their own arq job, off the upstream path)."""
        if state not in ("succeeded", "failed", "skipped"):
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

    # -- step 0: idempotent output ---------------------------------------------------------
    async def _already_stored(self) -> dict[str, Any] | None:
        try:
            head = await self.rt.storage.head(self.spec.dest)
        except AccessDenied as e:
            raise JobFailed("DestinationAccessDenied", str(e)) from None
        if head is None or head.metadata.get(META_JOB_ID) != self.job_id:
            return None
        rec = await self.rt.ledger.get(self.job_id)
        state: FinalState = "succeeded" if rec and rec.billed_calls else "skipped"
        await self.rt.ledger.finish(
            self.job_id,
            self.token,
            state,
            {
                "output_bytes": head.size,
                "output_etag": head.etag,
                "output_resolution": head.metadata.get("upscale-resolution"),
                "output_content_type": head.content_type,
                "note": "destination already holds this job's output",
            },
        )
        log.info("output already exists", state=state)
        return {"state": state, "dest": self.spec.dest.uri}

    # -- step 1: read and validate the source ------------------------------------------
    async def _read_source(self, upstream: str) -> ImageInput:
        t0 = time.monotonic()
        src, storage = self.spec.source, self.rt.storage
        cap = (
            self.s.jobs.max_source_bytes
            if self.s.jobs.reencode_oversize
            else self.s.jobs.max_input_bytes
        )

        def check(head: Head) -> None:
            if META_JOB_ID in head.metadata:
                # Recursion guard, last line: never upscale our own output.
                raise JobSkipped("source is an upscale-queue output (provenance metadata)")
            if src.etag and not src.version_id and head.etag != src.etag:
                raise JobFailed(
                    "SourceChanged",
                    f"source {src.uri} changed since the job was made (etag {head.etag}, "
                    f"expected {src.etag}); the newer version makes its own job",
                )
            if head.size > cap:
                raise JobFailed(
                    "InputTooLarge",
                    f"source is {head.size:,} bytes, over the {cap:,}-byte limit"
                    + ("" if self.s.jobs.reencode_oversize else " (re-encoding to fit is off)"),
                )
            if head.size == 0:
                raise JobFailed("InvalidImage", "source object is empty (0 bytes)")

        try:
            head, data = await storage.read_checked(src, max_bytes=cap, check=check)
            # Always decoded in full (off the event loop), even when the upstream fetches the
            # URL itself: a corrupt, truncated or bomb input must fail before any call.
            info = await asyncio.to_thread(validate, data, max_bytes=cap)
            prepared = await asyncio.to_thread(
                prepare,
                data,
                info,
                max_bytes=self.s.jobs.max_input_bytes,
                convert=self.s.jobs.convert_inputs,
                reencode=self.s.jobs.reencode_oversize,
            )
        except SourceMissing as e:
            raise JobFailed("SourceMissing", f"source {src.uri} does not exist ({e})") from None
        except AccessDenied as e:
            raise JobFailed("SourceAccessDenied", str(e)) from None
        self.timings["read"] = _ms(t0)
        self.source_format = info.format
        # written with the job's final state (one round trip fewer per job)
        self.fields.update(source_resolution=info.resolution, source_bytes=head.size)
        if prepared.changed:
            log.info("input prepared", note=prepared.note, bytes=len(prepared.data))
            self.fields["input_note"] = prepared.note
        name = src.key.rsplit("/", 1)[-1] or "image"
        pinfo = prepared.info
        if prepared.changed:
            name = f"{name.rsplit('.', 1)[0]}.{pinfo.extension}"
        if self.rt.upstream(upstream).needs_bytes:
            return ImageInput(data=prepared.data, content_type=pinfo.content_type, filename=name)
        if not prepared.changed:
            return ImageInput(url=storage.presign_get(src), content_type=pinfo.content_type)
        # The upstream fetches a URL: stage the prepared copy next to the output.
        self.staged = S3Object(
            bucket=self.spec.dest.bucket, key=f"{STAGING_PREFIX}{self.job_id}.{pinfo.extension}"
        )
        try:
            await storage.put_bytes(
                self.staged,
                prepared.data,
                content_type=pinfo.content_type,
                metadata={META_JOB_ID: self.job_id, "upscale-staged": "input"},
            )
        except AccessDenied as e:
            raise JobFailed("DestinationAccessDenied", f"cannot stage the input: {e}") from None
        return ImageInput(url=storage.presign_get(self.staged), content_type=pinfo.content_type)

    # -- admission and the paid call ----------------------------------------------------
    async def _admit(self) -> Admitted:
        """Admission before the source is read: a job that must wait reads and decodes
        nothing. Short waits happen here (woken by a freed slot, or at the known time the
        window frees one); longer ones hand the job back to its queue."""
        t0 = time.monotonic()
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
                if decision.reason in ("concurrency", "queued", "lane", "circuit_half_open"):
                    await waker.wait(min(decision.wait_s, QUEUED_RECHECK_S))
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
        price = flow.member(admitted.upstream).price_micros
        try:
            journal = await ledger.call_begin(self.job_id, self.token, admitted.token, price)
        except BaseException:
            await asyncio.shield(flow.release(admitted.token))
            raise
        self.slot = admitted.token
        if (reason := flow.paused_here(admitted.upstream)) is not None:
            # a 402/401/403 reached this process while the call was journaled: not sent
            await ledger.call_refused(self.job_id, admitted.token, None)
            raise KeyPaused(reason)
        req = UpscaleRequest(
            image=image,
            params=self.spec.params,
            model=self.spec.model,
            tag=self.spec.batch,
            idempotency_key=journal.idem,
        )
        t0 = time.monotonic()
        async with flow.hold(admitted.token):
            try:
                result = await self.rt.upstream(admitted.upstream).submit(req)
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
        try:
            status = 202 if result.pending_id else 200
            await flow.observe(admitted.upstream, result.rate, status, slot=admitted.token)
        except Exception as e:  # the money is saved; flow state catches up on the next call
            log.warning("could not report call outcome", error=type(e).__name__)
        await self._drop_staged()
        return paid

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
            self.job_id, self.slot, paid, replayed=result.replayed
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

    # -- step 2b: an async (202) upstream job -------------------------------------------
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

    # -- step 3: stream the result into S3 ---------------------------------------------
    async def _store(self, paid: PaidResult) -> dict[str, Any]:
        if not paid.outputs:
            await self._discard_paid()
            raise ue.ResultUnavailable("paid result had no output")
        out = paid.outputs[0]
        if not out.safe:
            raise JobFailed(
                "UnsafeContent", "the upstream's safety check withheld the image (call was billed)"
            )
        t0 = time.monotonic()
        info: dict[str, Any] = {}
        for attempt in range(1, DOWNLOAD_TRIES + 1):
            try:
                result = await output.store(
                    self.rt.storage,
                    dest=self.spec.dest,
                    source=self.spec.source,
                    source_format=self.source_format,
                    chunks=self._chunks(out),
                    output_format=self.s.jobs.output_format,
                    quality=self.s.jobs.output_quality,
                    max_source_bytes=self.s.jobs.max_source_bytes,
                    describe=self._describer(paid, out, info),
                )
                break
            except DownloadFailed as e:
                log.warning(
                    "result download failed; retrying the download", error=str(e), try_=attempt
                )
                if attempt == DOWNLOAD_TRIES:
                    raise
            except ResultRejected as e:
                raise JobFailed(
                    "ResultRejected",
                    f"{e}; the paid result is kept: fix the setting, then `upscale retry` "
                    "stores it without a new call (while its URL is valid)",
                ) from None
            except ue.ResultUnavailable:
                # Only now is a new call justified: the ledger will show both billed calls.
                await self._discard_paid()
                raise
            except (AccessDenied, SourceMissing, StorageRejected) as e:
                kind = {
                    AccessDenied: "DestinationAccessDenied",
                    SourceMissing: "DestinationMissing",
                    StorageRejected: "DestinationRejected",
                }[type(e)]
                raise JobFailed(
                    kind,
                    f"cannot write {self.spec.dest.uri}: {e}; the paid result is kept: fix it, "
                    "then `upscale retry` stores it without a new call",
                ) from None
            except StorageUnavailable:
                raise
        self.timings["store"] = _ms(t0)
        self.timings["total"] = _ms(self.started)
        stored, dest = result.stored, result.dest
        if dest != self.spec.dest:  # its extension named another format than it holds
            log.info("stored under its format's extension", dest=dest.uri, asked=self.spec.dest.uri)
        metrics.RESULT_BYTES.inc(stored.size)
        await self.rt.ledger.finish(
            self.job_id,
            self.token,
            "succeeded",
            {
                "output_bytes": stored.size,
                "output_etag": stored.etag,
                "output_resolution": info.get("resolution"),
                "output_content_type": info.get("content_type"),
                "seed": out.seed,
                "dest": dest.uri,  # also when an earlier run stored it elsewhere
                "output_note": result.note or None,
                "error": None,
                "error_class": None,
                **self._timing_fields(),
            },
        )
        log.info(
            "job succeeded",
            dest=dest.uri,
            bytes=stored.size,
            resolution=info.get("resolution"),
            timings_ms=self.timings,
        )
        return {"state": "succeeded", "dest": dest.uri, "bytes": stored.size}

    async def _discard_paid(self) -> None:
        await self.rt.redis.delete(Keys.paid(self.job_id))

    def _chunks(self, out: PaidOutput) -> AsyncIterator[bytes]:
        if out.url:
            return stream_url(
                self.rt.downloads,
                out.url,
                allowed_hosts=self.rt.result_hosts,
                max_bytes=self.s.jobs.max_result_bytes,
            )
        return stream_b64(out.b64 or "")

    def _describer(
        self, paid: PaidResult, out: PaidOutput, info: dict[str, Any]
    ) -> Callable[[ImageInfo], tuple[str, dict[str, str]]]:
        def describe(img: ImageInfo) -> tuple[str, dict[str, str]]:
            """Content type and provenance metadata of what is stored (`worker.output`)."""
            info["resolution"] = img.resolution
            info["content_type"] = img.content_type
            src = self.spec.source
            meta = {
                META_JOB_ID: self.job_id,
                "upscale-source": s3_key_quote(src.uri),
                "upscale-source-etag": src.etag or "",
                "upscale-source-version": src.version_id or "",
                "upscale-model": self.spec.model,
                "upscale-cost-usd": f"{paid.cost_micros / 1e6:.4f}",
                "upscale-seed": "" if out.seed is None else str(out.seed),
                "upscale-prompt-hash": prompt_hash(self.spec.params.prompt),
                "upscale-resolution": img.resolution,
                "upscale-request-id": paid.request_id or "",
            }
            return img.content_type, {k: v for k, v in meta.items() if v}

        return describe

    async def _drop_staged(self) -> None:
        if self.staged is not None:
            with contextlib.suppress(Exception):  # best effort: a lifecycle rule covers the rest
                await self.rt.storage.delete(self.staged)
            self.staged = None


def _ms(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)
