"""Read, check and prepare the source (decoded in full off the event loop: a bad image fails
before any call), and hand it to the upstream as it takes it: the bytes, a presigned URL, or
a prepared copy staged next to the output. A job for a version that is no longer the source's
current one ends `skipped` (superseded) before any call: the output reflects the newest
version of its source, whatever order the events came in."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import httpx
import structlog

from worker.contract import META_JOB_ID, STAGING_PREFIX, S3Object
from worker.images import ImageInfo, Prepared, prepare, validate
from worker.job.admit import Slot, release
from worker.job.run import OUTAGE_WAIT_S, Job, ms_since
from worker.outcomes import JobFailed, JobWaits, OwnOutput, SourceDeleted, Superseded
from worker.storage import AccessDenied, Head, SourceMissing
from worker.upstream import errors as ue
from worker.upstream.base import ImageInput

log = structlog.get_logger("worker.job")

Fields = dict[str, str | int]  # ledger record fields written with the job's final state


@dataclass(frozen=True)
class Source:
    """The source as this run read it, and as the upstream of its slot takes it."""

    info: ImageInfo  # what the source is (its format decides a `source` output format)
    size: int
    prepared: Prepared  # what goes to the upstream
    image: ImageInput  # how it goes: the bytes, or a presigned URL
    staged: S3Object | None  # a prepared copy staged for the upstream to fetch
    read_ms: int

    @property
    def fields(self) -> Fields:
        """What the record keeps of it, written with the job's final state (one round trip
        fewer per job)."""
        note = {"input_note": self.prepared.note} if self.prepared.changed else {}
        return {"source_resolution": self.info.resolution, "source_bytes": self.size, **note}


async def read(job: Job, slot: Slot) -> Source:
    """Read the source for the admitted call `slot`; a read that fails gives the slot back."""
    try:
        t0 = time.monotonic()
        head, info, prepared = await _read(job)
        image, staged = await _image(job, prepared, job.rt.upstream(slot.upstream).needs_bytes)
        return Source(info, head.size, prepared, image, staged, ms_since(t0))
    except BaseException:
        await release(job, slot)
        raise


async def _read(job: Job) -> tuple[Head, ImageInfo, Prepared]:
    src, storage, jobs = job.spec.source, job.rt.storage, job.settings.jobs
    cap = jobs.max_source_bytes if jobs.reencode_oversize else jobs.max_input_bytes

    def check(head: Head) -> None:
        if META_JOB_ID in head.metadata:
            # Recursion guard, last line: never upscale our own output.
            raise OwnOutput("source is an upscale-queue output (provenance metadata)")
        # Without a version id the GET read the current version: its ETag says if the
        # object was replaced since the job was made (checked here: the body is not read).
        if not src.version_id and (why := newer_version(src, head)):
            raise superseded(src, why)
        if head.size > cap:
            raise JobFailed(
                "InputTooLarge",
                f"source is {head.size:,} bytes, over the {cap:,}-byte limit"
                + ("" if jobs.reencode_oversize else " (re-encoding to fit is off)"),
            )
        if head.size == 0:
            raise JobFailed("InvalidImage", "source object is empty (0 bytes)")

    try:
        read = storage.read_checked(src, max_bytes=cap, check=check)
        if src.version_id:
            # The GET reads the job's own version; the key's current one (a HEAD without
            # the version id, beside the GET) says whether a newer one was uploaded since.
            (head, data), current = await asyncio.gather(read, storage.head_current(src))
            if current is None:
                raise SourceDeleted(
                    f"source deleted: {src.uri} has no current version (deleted since the "
                    f"job was made); version {src.version_id} is not upscaled"
                )
            if why := newer_version(src, current):
                raise superseded(src, why)
        else:
            head, data = await read

        # Always decoded in full (off the event loop), even when the upstream fetches the
        # URL itself: a corrupt, truncated or bomb input must fail before any call.
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
        # Deleted since the job was made (enqueue checks that it exists): normal S3 life.
        version = f" version {src.version_id}" if src.version_id else ""
        raise SourceDeleted(f"source deleted: {src.uri}{version} does not exist ({e})") from None
    except AccessDenied as e:
        raise JobFailed("SourceAccessDenied", str(e)) from None
    if prepared.changed:
        log.info("input prepared", note=prepared.note, bytes=len(prepared.data))
    return head, info, prepared


async def _image(
    job: Job, prepared: Prepared, as_bytes: bool
) -> tuple[ImageInput, S3Object | None]:
    """The source as the upstream takes it: the bytes (`as_bytes`), else a presigned URL of
    the source, or of the prepared copy staged next to the output (and that copy)."""
    src, storage, pinfo = job.spec.source, job.rt.storage, prepared.info
    if as_bytes:
        name = src.key.rsplit("/", 1)[-1] or "image"
        if prepared.changed:
            name = f"{name.rsplit('.', 1)[0]}.{pinfo.extension}"
        return ImageInput(data=prepared.data, content_type=pinfo.content_type, filename=name), None
    if not prepared.changed:
        return ImageInput(url=storage.presign_get(src), content_type=pinfo.content_type), None
    staged = S3Object(
        bucket=job.spec.dest.bucket, key=f"{STAGING_PREFIX}{job.id}.{pinfo.extension}"
    )
    try:
        await storage.put_bytes(
            staged,
            prepared.data,
            content_type=pinfo.content_type,
            metadata={META_JOB_ID: job.id, "upscale-staged": "input"},
        )
    except AccessDenied as e:
        raise JobFailed("DestinationAccessDenied", f"cannot stage the input: {e}") from None
    return ImageInput(url=storage.presign_get(staged), content_type=pinfo.content_type), staged


async def drop_staged(job: Job, source: Source) -> None:
    """The staged copy is used up once its call ended (a retry stages it again)."""
    if source.staged is not None:
        with contextlib.suppress(Exception):  # best effort: a lifecycle rule covers the rest
            await job.rt.storage.delete(source.staged)


async def explain_fetch_failure(job: Job, url: str, err: ue.UpstreamError) -> None:
    """The upstream could not fetch the source from its URL: an S3 outage waits; a URL that
    works from here but not from the upstream is a setting to fix. Returns when neither."""
    try:
        async with job.rt.downloads.stream(
            "GET", url, headers={"Range": "bytes=0-0"}, timeout=10
        ) as resp:
            status = resp.status_code
    except httpx.HTTPError as e:
        raise JobWaits("storage", OUTAGE_WAIT_S, f"S3 unreachable ({type(e).__name__})") from None
    if status >= 500:
        raise JobWaits("storage", OUTAGE_WAIT_S, f"S3 answered HTTP {status}")
    if status < 300:
        endpoint = job.settings.s3.endpoint_url or "S3"
        raise JobFailed(
            "SourceUnreachable",
            f"the upstream could not fetch the source from {endpoint} ({err.describe()}), "
            "which this worker reaches: the endpoint is not reachable from the upstream; "
            "set UPSCALE_IMAGE_MODE=data_url to send the image bytes instead",
        )


async def check_still_newest(job: Job) -> None:
    """The source's current version is still the job's, right before the upload: a newer
    version uploaded during the call has (or gets) its own job, whose output this one must
    not overwrite. One HEAD. A re-check, not a fence: S3 conditional writes (`If-Match`)
    are not on every S3, so a newer version's output stored between this HEAD and the end
    of this upload is still overwritten (a window of one upload, not of a call)."""
    src = job.spec.source
    if not (src.version_id or src.etag):
        return  # a job made without them cannot tell versions apart
    try:
        current = await job.rt.storage.head_current(src)
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


def newer_version(src: S3Object, current: Head) -> str | None:
    """Why `current` (the key's current version) is not the version the job `src` asked for,
    or None when it is. Version ids are compared where both sides have one (S3 orders versions
    itself: the current one is the newest), and ETags; a job with neither cannot tell."""
    if src.version_id and current.version_id and current.version_id != src.version_id:
        new, asked = current.version_id, src.version_id
        return f"the source has a newer version ({new}; the job's is {asked})"
    # Also under one version id: `null` names every write while versioning is off or suspended.
    if src.etag and current.etag and current.etag != src.etag:
        return f"the source was replaced (ETag now {current.etag}; the job's is {src.etag})"
    return None


def superseded(src: S3Object, why: str) -> Superseded:
    return Superseded(f"superseded: {why}; {src.uri} as it is now makes its own job")
