"""The job: admit -> read -> call -> stream -> record, for one source object.

Money rules: a paid result is saved (atomically with its spend) before anything else happens,
so a crash, a truncated download or an S3 outage resumes from it instead of paying again.
Waiting (pause, 429, budget, outage) is never a failed attempt: `attempts` in the ledger counts
real failures only, and arq's own try counter is set out of reach (see app.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import structlog
from arq import Retry

from worker import metrics
from worker.callbacks import queue_batch_notice_if_done, queue_job_notice
from worker.contract import (
    STAGING_PREFIX,
    JobSpec,
    JobState,
    S3Object,
    prompt_hash,
    s3_key_quote,
    usd_to_micros,
)
from worker.flow import Admitted, Denied
from worker.images import ImageRejected, prepare, sniff, validate
from worker.ledger import JobRecord
from worker.logs import redact
from worker.results import DownloadFailed, ResultRejected, stream_b64, stream_url
from worker.runtime import Runtime
from worker.storage import AccessDenied, SourceMissing, StorageUnavailable
from worker.upstream import errors as ue
from worker.upstream.base import CallResult, ImageInput, Output, UpscaleRequest

log = structlog.get_logger("worker.job")

META_JOB_ID = "upscale-job-id"
# Short denials are waited out in the job; longer ones hand the job back to the queue.
INLINE_WAIT_MAX_S = 3.0
INLINE_WAIT_TOTAL_S = 60.0
DOWNLOAD_TRIES = 3


class JobFailed(Exception):
    """The job cannot succeed: ends `failed` with this reason."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = redact(message)[:1000]


class JobSkipped(Exception):
    """Nothing to do (e.g. the source is one of our own outputs): ends `skipped`, no call."""


class UpscaleJob:
    def __init__(self, rt: Runtime, spec: JobSpec, job_id: str) -> None:
        self.rt = rt
        self.s = rt.settings
        self.spec = spec
        self.job_id = job_id
        self.timings: dict[str, int] = {}
        self.started = time.monotonic()
        self.staged: S3Object | None = None

    # ------------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        ledger = self.rt.ledger
        rec = await ledger.get(self.job_id)
        if rec is not None and rec.final:
            return {"state": rec.state, "note": "already final"}
        attempt = (rec.attempts if rec else 0) + 1
        structlog.contextvars.bind_contextvars(
            job_id=self.job_id,
            batch=self.spec.batch,
            source=self.spec.source.uri,
            attempt=attempt,
        )
        try:
            await ledger.set_state(self.job_id, JobState.RUNNING, wait_reason=None)
            out = await self._run()
        except JobFailed as f:
            await self._fail(f.error_class, f.message)
            out = {"state": "failed", "error": f.message}
        except JobSkipped as sk:
            await ledger.set_state(self.job_id, JobState.SKIPPED, note=str(sk), wait_reason=None)
            log.info("job skipped", reason=str(sk))
            out = {"state": "skipped", "reason": str(sk)}
        finally:
            await self._drop_staged()
            structlog.contextvars.unbind_contextvars("job_id", "batch", "source", "attempt")
        await self._after_final(str(out.get("state", "")))
        return out

    async def _after_final(self, state: str) -> None:
        metrics.JOBS_FINISHED.labels(state).inc()
        """Queue completion notices (delivered by their own arq job, off the upstream path)."""
        redis: Any = self.rt.redis  # an ArqRedis (worker.redis_conn.connect)
        try:
            if self.spec.callback_url:
                await queue_job_notice(redis, self.job_id)
            if self.spec.batch:
                await queue_batch_notice_if_done(redis, self.spec.batch)
        except Exception as e:  # the job itself is done and recorded; a notice is best effort
            log.warning("could not queue completion notice", error=str(e))

    async def on_timeout(self) -> dict[str, Any]:
        msg = f"job did not finish within {self.s.job_timeout_s}s (a paid result is kept)"
        log.warning("job timed out", limit_s=self.s.job_timeout_s)
        try:
            await self._failed_attempt("Timeout", msg)
        except JobFailed as f:
            await self._fail(f.error_class, f.message)
            await self._after_final("failed")
            return {"state": "failed", "error": f.message}

    async def _run(self) -> dict[str, Any]:
        paid = await self.rt.ledger.load_paid(self.job_id)
        if paid is None:
            done = await self._already_stored()
            if done is not None:
                return done
            image = await self._read_source()
            paid = await self._call(image)
        elif paid.get("pending_id"):
            log.info("resuming a pending upstream job", pending_id=paid["pending_id"])
        else:
            log.info("resuming from a paid result: no new upstream call")
        if paid.get("pending_id"):
            paid = await self._poll(paid)
        return await self._store(paid)

    # -- step 0: idempotent output ------------------------------------------------------
    async def _already_stored(self) -> dict[str, Any] | None:
        try:
            head = await self.rt.storage.head(self.spec.dest)
        except StorageUnavailable as e:
            await self._wait("storage", self._backoff(0), str(e))
        except AccessDenied as e:
            raise JobFailed("DestinationAccessDenied", str(e)) from None
        if head is None or head.metadata.get(META_JOB_ID) != self.job_id:
            return None
        rec = await self.rt.ledger.get(self.job_id)
        state = JobState.SUCCEEDED if rec and rec.billed_calls else JobState.SKIPPED
        await self.rt.ledger.set_state(
            self.job_id,
            state,
            output_bytes=head.size,
            output_etag=head.etag,
            output_resolution=head.metadata.get("upscale-resolution"),
            output_content_type=head.content_type,
            wait_reason=None,
            note="destination already holds this job's output",
        )
        log.info("output already exists", state=state.value)
        return {"state": state.value, "dest": self.spec.dest.uri}

    # -- step 1: read and validate the source ------------------------------------------
    async def _read_source(self) -> ImageInput:
        t0 = time.monotonic()
        src, storage = self.spec.source, self.rt.storage
        try:
            head = await storage.head(src)
            if head is None:
                raise JobFailed("SourceMissing", f"source {src.uri} does not exist (deleted?)")
            if META_JOB_ID in head.metadata:
                # Recursion guard, last line: never upscale our own output.
                raise JobSkipped("source is an upscale-queue output (provenance metadata)")
            if src.etag and not src.version_id and head.etag != src.etag:
                raise JobFailed(
                    "SourceChanged",
                    f"source {src.uri} changed since the job was made (etag {head.etag}, "
                    f"expected {src.etag}); the newer version makes its own job",
                )
            cap = self.s.max_source_bytes if self.s.reencode_oversize else self.s.max_input_bytes
            if head.size > cap:
                raise JobFailed(
                    "InputTooLarge",
                    f"source is {head.size:,} bytes, over the {cap:,}-byte limit"
                    + ("" if self.s.reencode_oversize else " (re-encoding to fit is off)"),
                )
            if head.size == 0:
                raise JobFailed("InvalidImage", "source object is empty (0 bytes)")
            # Always decoded in full, even when the upstream fetches the URL itself: a corrupt,
            # truncated or bomb input must fail here, before any call is made.
            data = await storage.read(src, max_bytes=cap)
            info = validate(data, max_bytes=cap)
            prepared = await asyncio.to_thread(
                prepare,
                data,
                info,
                max_bytes=self.s.max_input_bytes,
                convert=self.s.convert_inputs,
                reencode=self.s.reencode_oversize,
            )
        except ImageRejected as e:
            raise JobFailed("InvalidImage", str(e)) from None
        except SourceMissing as e:
            raise JobFailed("SourceMissing", str(e)) from None
        except AccessDenied as e:
            raise JobFailed("SourceAccessDenied", str(e)) from None
        except StorageUnavailable as e:
            await self._wait("storage", self._backoff(0), str(e))
        self.source_info = info
        self.timings["read"] = _ms(t0)
        await self.rt.ledger.update(
            self.job_id, source_resolution=info.resolution, source_bytes=head.size
        )
        if prepared.changed:
            log.info("input prepared", note=prepared.note, bytes=len(prepared.data))
            await self.rt.ledger.update(self.job_id, input_note=prepared.note)
        name = src.key.rsplit("/", 1)[-1] or "image"
        pinfo = prepared.info
        if prepared.changed:
            name = f"{name.rsplit('.', 1)[0]}.{pinfo.extension}"
        if self.rt.upstream.needs_bytes:
            return ImageInput(data=prepared.data, content_type=pinfo.content_type, filename=name)
        if not prepared.changed:
            return ImageInput(url=storage.presign_get(src), content_type=pinfo.content_type)
        # The upstream fetches a URL: stage the prepared copy next to the output.
        self.staged = S3Object(
            bucket=self.spec.dest.bucket,
            key=f"{STAGING_PREFIX}{self.job_id}.{pinfo.extension}",
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
        except (StorageUnavailable, SourceMissing) as e:
            await self._wait("storage", self._backoff(0), str(e))
        return ImageInput(url=storage.presign_get(self.staged), content_type=pinfo.content_type)

    # -- step 2: admission + the paid call ----------------------------------------------
    async def _admit(self) -> Admitted:
        waited = 0.0
        while True:
            decision = await self.rt.flow.admit(
                batch=self.spec.batch, lane=self.spec.lane, job_id=self.job_id
            )
            if isinstance(decision, Admitted):
                if waited:
                    self.timings["admit_wait"] = int(waited * 1000)
                return decision
            assert isinstance(decision, Denied)
            short = decision.reason in ("rate", "concurrency", "circuit_half_open", "lane")
            if short and decision.wait_s <= INLINE_WAIT_MAX_S and waited < INLINE_WAIT_TOTAL_S:
                # Jitter spreads the wake-ups of many waiting jobs over the slot.
                delay = decision.wait_s + random.uniform(0, 0.05)
                await asyncio.sleep(delay)
                waited += delay
                continue
            await self._wait(decision.reason, decision.wait_s, f"waiting: {decision.reason}")

    async def _call(self, image: ImageInput) -> dict[str, Any]:
        admitted = await self._admit()
        req = UpscaleRequest(
            image=image, params=self.spec.params, model=self.spec.model, tag=self.spec.batch
        )
        flow, ledger = self.rt.flow, self.rt.ledger
        t0 = time.monotonic()
        async with flow.lease(admitted.token, self.spec.batch):
            try:
                result = await self.rt.upstream.submit(req)
            except ue.UpstreamError as err:
                metrics.UPSTREAM_CALLS.labels(str(err.status or "error")).inc()
                await ledger.record_call(
                    self.job_id, cost_micros=0, request_id=err.request_id, billed=False
                )
                log.warning(
                    "upstream call failed",
                    status=err.status,
                    error=type(err).__name__,
                    request_id=err.request_id,
                    latency_ms=_ms(t0),
                    detail=err.message,
                    kind=admitted.kind,
                )
                await self._on_upstream_error(err)
        self.timings["call"] = _ms(t0)
        metrics.UPSTREAM_CALLS.labels("202" if result.pending_id else "200").inc()
        metrics.UPSTREAM_LATENCY.observe(time.monotonic() - t0)
        await flow.report_ok(admitted.token)
        paid = await self._paid(result, t0)
        await self._drop_staged()
        return paid

    async def _drop_staged(self) -> None:
        if self.staged is not None:
            with contextlib.suppress(Exception):  # best effort: a lifecycle rule covers the rest
                await self.rt.storage.delete(self.staged)
            self.staged = None

    async def _paid(self, result: CallResult, t0: float) -> dict[str, Any]:
        """Persist what a successful submit returned, with its spend, before anything else."""
        outputs = [o.__dict__ for o in result.outputs if o.url or not o.b64]
        b64 = [o.b64 for o in result.outputs if o.b64]
        billed = result.pending_id is None
        cost = usd_to_micros(self.s.price_usd) * len(result.outputs) if billed else 0
        paid = {
            "request_id": result.request_id,
            "pending_id": result.pending_id,
            "outputs": outputs,
            "cost_micros": cost,
            "at": time.time(),
        }
        if b64:
            # Saved with the spend: a crash before the upload resumes from it, not a new call.
            paid["b64"] = b64[0]
        await self.rt.ledger.record_call(
            self.job_id, cost_micros=cost, request_id=result.request_id, billed=billed, paid=paid
        )
        metrics.SPEND_USD.inc(cost / 1e6)
        log.info(
            "upstream call ok",
            status=202 if result.pending_id else 200,
            request_id=result.request_id,
            latency_ms=_ms(t0),
            cost_usd=cost / 1e6,
            rate_remaining=result.rate_remaining,
        )
        return paid

    async def _poll(self, paid: dict[str, Any]) -> dict[str, Any]:
        """Poll a 202 async job until it completes (at most every `async_poll_interval_s`)."""
        pending = str(paid["pending_id"])
        interval = self.s.async_poll_interval_s
        deadline = self.started + self.s.job_timeout_s * 0.8
        while True:
            await asyncio.sleep(interval)
            try:
                result = await self.rt.upstream.poll(pending)
            except ue.UpstreamJobFailed as err:
                await self.rt.ledger.drop_paid(self.job_id)  # failed upstream job: not billed
                await self._failed_attempt("UpstreamJobFailed", err.describe())
            except ue.UpstreamError as err:
                # A failed poll is not a failed job: the pending id stays saved, polling resumes.
                await self._on_upstream_error(err)
            if result.pending_id is None:
                return await self._paid(result, time.monotonic())
            if time.monotonic() + interval > deadline:
                # Hand back to the queue: the pending id is saved, the next run keeps polling.
                await self._wait("upstream_pending", 0, f"upstream job {pending} still running")

    async def _on_upstream_error(self, err: ue.UpstreamError) -> NoReturn:
        flow = self.rt.flow
        if isinstance(err, ue.PauseError):
            await flow.report_paused(err.pause_reason, err.describe())  # type: ignore[arg-type]
            await self._wait(f"paused:{err.pause_reason}", self.s.pause_poll_s, err.describe())
        if isinstance(err, ue.RateLimited):
            await flow.report_rate_limited(err.retry_after)
            await self._wait("rate_limited", err.retry_after, err.describe())
        if isinstance(err, ue.PermanentError):
            raise JobFailed(type(err).__name__, f"upstream rejected the job: {err.describe()}")
        await flow.report_server_error()
        await self._failed_attempt(type(err).__name__, err.describe())

    # -- step 3: stream the result into S3 ---------------------------------------------
    async def _store(self, paid: dict[str, Any]) -> dict[str, Any]:
        outputs = [Output(**o) for o in paid.get("outputs", [])]
        if not outputs and "b64" not in paid:
            await self.rt.ledger.drop_paid(self.job_id)
            await self._failed_attempt("ResultUnavailable", "paid result had no output")
        out = outputs[0] if outputs else Output(b64=paid["b64"])
        if not out.safe and "b64" not in paid:
            await self.rt.ledger.drop_paid(self.job_id)
            raise JobFailed(
                "UnsafeContent", "the upstream's safety check withheld the image (call was billed)"
            )
        t0 = time.monotonic()
        info: dict[str, Any] = {}
        for attempt in range(1, DOWNLOAD_TRIES + 1):
            try:
                stored = await self.rt.storage.upload_stream(
                    self.spec.dest,
                    self._chunks(out, paid),
                    describe=self._describer(paid, out, info),
                )
                break
            except DownloadFailed as e:
                log.warning(
                    "result download failed; retrying the download", error=str(e), try_=attempt
                )
                if attempt == DOWNLOAD_TRIES:
                    await self._wait("download", self._backoff(1), str(e))
            except ResultRejected as e:
                raise JobFailed(
                    "ResultRejected",
                    f"{e}; the paid result is kept: fix the setting, then `upscale retry` "
                    "stores it without a new call (while its URL is valid)",
                ) from None
            except ue.ResultUnavailable as e:
                # Only now is a new call justified: the ledger will show both billed calls.
                await self.rt.ledger.drop_paid(self.job_id)
                await self._failed_attempt("ResultUnavailable", e.message)
            except AccessDenied as e:
                raise JobFailed("DestinationAccessDenied", str(e)) from None
            except (StorageUnavailable, SourceMissing) as e:
                await self._wait("storage", self._backoff(1), str(e))
        self.timings["store"] = _ms(t0)
        metrics.RESULT_BYTES.inc(stored.size)
        self.timings["total"] = _ms(self.started)
        await self.rt.ledger.set_state(
            self.job_id,
            JobState.SUCCEEDED,
            output_bytes=stored.size,
            output_etag=stored.etag,
            output_resolution=info.get("resolution"),
            output_content_type=info.get("content_type"),
            seed=out.seed,
            wait_reason=None,
            error=None,
            error_class=None,
            extra={f"t_{k}_ms": v for k, v in self.timings.items()},
        )
        await self.rt.ledger.drop_paid(self.job_id)
        log.info(
            "job succeeded",
            dest=self.spec.dest.uri,
            bytes=stored.size,
            resolution=info.get("resolution"),
            timings_ms=self.timings,
        )
        return {"state": "succeeded", "dest": self.spec.dest.uri, "bytes": stored.size}

    def _chunks(self, out: Output, paid: dict[str, Any]) -> AsyncIterator[bytes]:
        if out.url:
            return stream_url(
                self.rt.downloads,
                out.url,
                allowed_hosts=self.s.allowed_result_hosts(),
                max_bytes=self.s.max_result_bytes,
            )
        return stream_b64(out.b64 or paid["b64"])

    def _describer(self, paid: dict[str, Any], out: Output, info: dict[str, Any]) -> Any:
        def describe(first: bytes) -> tuple[str, dict[str, str]]:
            img = sniff(first)
            if img is None:
                raise ue.ResultUnavailable("upstream result is not a readable image")
            info["resolution"] = img.resolution
            info["content_type"] = img.content_type
            src = self.spec.source
            meta = {
                META_JOB_ID: self.job_id,
                "upscale-source": s3_key_quote(src.uri),
                "upscale-source-etag": src.etag or "",
                "upscale-source-version": src.version_id or "",
                "upscale-model": self.spec.model,
                "upscale-cost-usd": f"{paid.get('cost_micros', 0) / 1e6:.4f}",
                "upscale-seed": "" if out.seed is None else str(out.seed),
                "upscale-prompt-hash": prompt_hash(self.spec.params.prompt),
                "upscale-resolution": img.resolution,
                "upscale-request-id": paid.get("request_id") or "",
            }
            return img.content_type, {k: v for k, v in meta.items() if v}

        return describe

    # -- outcomes -----------------------------------------------------------------------
    async def _wait(self, reason: str, seconds: float, detail: str) -> NoReturn:
        """Hand the job back to the queue without counting a failure."""
        await self.rt.ledger.set_state(
            self.job_id, JobState.WAITING, wait_reason=reason, wait_detail=redact(detail)[:300]
        )
        await self.rt.ledger.incr(self.job_id, "waits")
        metrics.JOB_WAITS.labels(reason.split(":", 1)[0]).inc()
        log.info("job waiting", reason=reason, retry_in_s=round(seconds, 2))
        raise Retry(defer=max(0.05, seconds))

    async def _failed_attempt(self, error_class: str, message: str) -> NoReturn:
        attempts = await self.rt.ledger.incr(self.job_id, "attempts")
        if attempts >= self.s.max_attempts:
            raise JobFailed(error_class, f"{message} (gave up after {attempts} attempts)")
        await self.rt.ledger.update(self.job_id, error_class=error_class, error=redact(message))
        await self._wait("backoff", self._backoff(attempts), message)

    def _backoff(self, attempts: int) -> float:
        # Exponential backoff with full jitter (spreads retries of many jobs apart).
        ceiling = min(self.s.backoff_max_s, self.s.backoff_base_s * (2 ** max(0, attempts)))
        return random.uniform(self.s.backoff_base_s / 2, ceiling)

    async def _fail(self, error_class: str, message: str) -> None:
        await self.rt.ledger.set_state(
            self.job_id,
            JobState.FAILED,
            error_class=error_class,
            error=message,
            wait_reason=None,
            extra={f"t_{k}_ms": v for k, v in self.timings.items()},
        )
        log.warning("job failed", error_class=error_class, error=message)


def _ms(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)


async def record_invalid_payload(rt: Runtime, job_id: str, error: str) -> JobRecord | None:
    """A payload that does not parse can never succeed: record it as failed if we know it."""
    await rt.ledger.set_state(
        job_id, JobState.FAILED, error_class="InvalidPayload", error=redact(error)[:1000]
    )
    return await rt.ledger.get(job_id)
