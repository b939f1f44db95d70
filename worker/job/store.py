"""Step 3: stream the paid result into S3 in the output format, with provenance metadata; never
over the output of a newer version of the source (checked right before the upload)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from worker import metrics, output
from worker.contract import (
    META_JOB_ID,
    prompt_hash,
    s3_key_quote,
)
from worker.images import ImageInfo
from worker.job.base import _ms, log
from worker.job.source import SourceStep, newer_version
from worker.keys import Keys
from worker.ledger import PaidOutput, PaidResult
from worker.outcomes import JobFailed, Superseded
from worker.results import DownloadFailed, ResultRejected, stream_b64, stream_url
from worker.storage import (
    AccessDenied,
    DestinationChanged,
    SourceMissing,
    StorageRejected,
    StorageUnavailable,
)
from worker.upstream import errors as ue

DOWNLOAD_TRIES = 3  # a truncated or failed result download is retried (no new call)


class StoreStep(SourceStep):
    """Storing needs the destination as the run saw it (`SourceStep`): its write is
    conditional on it."""

    async def _store(self, paid: PaidResult) -> dict[str, Any]:
        if not paid.outputs:
            await self._discard_paid()
            raise ue.ResultUnavailable("paid result had no output")
        out = paid.outputs[0]
        if not out.safe:
            raise JobFailed(
                "UnsafeContent", "the upstream's safety check withheld the image (call was billed)"
            )
        await self._check_still_newest()
        await self._seen_at_start()
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
                    seen=self.seen,
                )
                break
            except DestinationChanged:
                # Another writer stored there since this run looked (conditional write, 412):
                # a run of this job that overtook this one, or a newer version's job.
                found = await self._find_output()
                if found is not None:
                    return await self._adopt(found)
                raise Superseded(
                    f"superseded: {self.spec.dest.uri} was written by another job while this one "
                    "ran (a newer version of the source?); this paid result is not written over it"
                ) from None
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

    async def _check_still_newest(self) -> None:
        """The source's current version is still the job's, right before the upload: a newer
        version uploaded during the call has (or gets) its own job, whose output this one must
        not overwrite. One HEAD. A re-check, not a fence: S3 conditional writes (`If-Match`)
        are not on every S3, so a newer version's output stored between this HEAD and the end
        of this upload is still overwritten (a window of one upload, not of a call)."""
        src = self.spec.source
        if not (src.version_id or src.etag):
            return  # a job made without them cannot tell versions apart
        try:
            current = await self.rt.storage.head_current(src)
        except AccessDenied:
            return  # cannot tell; the read before the call found the job's version current
        if current is None:
            return  # deleted since the call: nothing newer to overwrite, the paid result is kept
        if why := newer_version(src, current):
            raise Superseded(
                f"superseded after its call: {why}; this paid upscale of the older version "
                "is not stored (it would overwrite the newer version's output); the call "
                "stays in the spend"
            )

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
