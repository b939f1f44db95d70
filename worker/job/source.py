"""Step 0 and 1: the output may already be there (idempotent outputs); read, check and prepare
the source (decoded in full off the event loop: a bad image fails before any call)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from worker.contract import (
    META_JOB_ID,
    STAGING_PREFIX,
    S3Object,
)
from worker.images import ImageInfo, Prepared, prepare, validate
from worker.job.base import JobBase, _ms, log
from worker.ledger.transitions import FinalState
from worker.outcomes import JobFailed, JobSkipped
from worker.storage import (
    AccessDenied,
    Head,
    SourceMissing,
)
from worker.upstream.base import ImageInput


class SourceStep(JobBase):
    _output_head: asyncio.Future[Head | None] | None = None

    def _look_for_output(self) -> None:
        """Start the destination's HEAD now, beside the run's start (one round trip off the
        path of every job); `_already_stored` reads it."""
        self._output_head = asyncio.ensure_future(self.rt.storage.head(self.spec.dest))

    def _forget_output(self) -> None:
        if self._output_head is not None and not self._output_head.done():
            self._output_head.cancel()
        elif self._output_head is not None and not self._output_head.cancelled():
            self._output_head.exception()  # read: an unused failure is not an error
        self._output_head = None

    async def _already_stored(self) -> dict[str, Any] | None:
        pending, self._output_head = self._output_head, None
        try:
            head = await (pending or self.rt.storage.head(self.spec.dest))
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
            jobs = self.s.jobs

            def check_and_prepare() -> tuple[ImageInfo, Prepared]:
                info = validate(data, max_bytes=cap)
                return info, prepare(
                    data,
                    info,
                    max_bytes=jobs.max_input_bytes,
                    convert=jobs.convert_inputs,
                    reencode=jobs.reencode_oversize,
                )

            info, prepared = await asyncio.to_thread(check_and_prepare)
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
