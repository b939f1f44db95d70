"""Step 0 and 1: the output may already be there (idempotent outputs); read, check and prepare
the source (decoded in full off the event loop: a bad image fails before any call). A job for a
version that is no longer the source's current one ends `skipped` (superseded) before any call:
the output reflects the newest version of its source, whatever order the events came in."""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import time
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from worker.contract import (
    META_JOB_ID,
    STAGING_PREFIX,
    S3Object,
)
from worker.formats import EXTENSIONS, key_for
from worker.images import ImageInfo, Prepared, prepare, validate
from worker.job.base import JobBase, _ms, log
from worker.ledger.transitions import FinalState
from worker.outcomes import JobFailed, OwnOutput, SourceDeleted, Superseded
from worker.storage import (
    AccessDenied,
    Head,
    SourceMissing,
    classify,
)
from worker.upstream.base import ImageInput

Found = tuple[S3Object, Head]  # where this job's output is, and what its HEAD said


def output_keys(dest_key: str) -> list[str]:
    """Every key this job's output can be stored under: the destination's, and the same stem
    with the extension of each format the output policy may store (`formats.key_for`: a `.jpg`
    destination holding PNG is stored as `.png`). A key naming no format is used as it is."""
    keys = [dest_key]
    for fmt in EXTENSIONS:
        if (key := key_for(dest_key, fmt)) not in keys:
            keys.append(key)
    return keys


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


class SourceStep(JobBase):
    _output_head: asyncio.Future[Found | None] | None = None

    seen: dict[str, str | None] | None = None  # the destination as this run saw it

    def _look_for_output(self) -> None:
        """Start looking for the output now, beside the run's start (one round trip off the
        path of every job); `_already_stored` reads it. A backfill that listed the destination
        just before enqueue (`dest_listed`) found none there: nothing to ask."""
        if self.spec.dest_listed:
            self.seen = dict.fromkeys(output_keys(self.spec.dest.key))
        else:
            self._output_head = asyncio.ensure_future(self._find_output())

    async def _find_output(self) -> Found | None:
        """This job's output (its job id in the metadata), whatever extension it was stored
        under. One request when there is none, the common case: a HEAD when the destination
        names no format, else one LIST of its stem's keys (any extension, one request, where a
        HEAD per extension would be seven); the keys it finds are HEADed for the job id."""
        dest, storage = self.spec.dest, self.rt.storage
        candidates = keys = output_keys(dest.key)
        if len(keys) > 1:
            keys = await self._listed(dest.bucket, posixpath.splitext(dest.key)[0] + ".", keys)
        objs = [S3Object(bucket=dest.bucket, key=k) for k in keys]
        heads = await asyncio.gather(*(storage.head(o) for o in objs))
        # what is there now, per key it may be stored under: its write is conditional on it
        self.seen = dict.fromkeys(candidates)
        self.seen.update({o.key: h.etag for o, h in zip(objs, heads, strict=True) if h})
        for obj, head in zip(objs, heads, strict=True):
            if head is not None and head.metadata.get(META_JOB_ID) == self.job_id:
                return obj, head
        return None

    async def _listed(self, bucket: str, prefix: str, keys: list[str]) -> list[str]:
        """Those of `keys` (all under `prefix`) that exist, in their order. A listing cut short
        (over 1,000 keys share the prefix) cannot prove absence: then all of them."""
        where = f"list s3://{bucket}/{prefix}"
        try:
            page = await asyncio.to_thread(
                self.rt.storage.s3.list_objects_v2, Bucket=bucket, Prefix=prefix
            )
        except (ClientError, BotoCoreError) as e:
            err = classify(e, where)
            if isinstance(err, SourceMissing):  # no such bucket: no output in it either
                return []
            raise err from None
        if page.get("IsTruncated"):
            return keys
        present = {str(o["Key"]) for o in page.get("Contents", [])}
        return [k for k in keys if k in present]

    def _forget_output(self) -> None:
        if self._output_head is not None and not self._output_head.done():
            self._output_head.cancel()
        elif self._output_head is not None and not self._output_head.cancelled():
            self._output_head.exception()  # read: an unused failure is not an error
        self._output_head = None

    async def _already_stored(self) -> dict[str, Any] | None:
        if self.spec.dest_listed:
            return None
        pending, self._output_head = self._output_head, None
        try:
            found = await (pending or self._find_output())
        except AccessDenied as e:
            raise JobFailed("DestinationAccessDenied", str(e)) from None
        return None if found is None else await self._adopt(found)

    async def _seen_at_start(self) -> None:
        """A run that resumes a paid result skipped `_already_stored`: its look at the
        destination (started with the run) still tells what its write is conditional on."""
        if self.seen is None and self._output_head is not None:
            with contextlib.suppress(Exception):  # unknown: the write is unconditional
                await self._output_head

    async def _adopt(self, found: Found) -> dict[str, Any]:
        """The destination holds this job's output (stored by an earlier or another run): the
        job ends with it, no call, nothing written."""
        dest, head = found
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
                "dest": dest.uri,  # where it is (another extension than asked, maybe)
                "note": "destination already holds this job's output",
            },
        )
        log.info("output already exists", state=state, dest=dest.uri)
        return {"state": state, "dest": dest.uri}

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
                raise OwnOutput("source is an upscale-queue output (provenance metadata)")
            # Without a version id the GET read the current version: its ETag says if the
            # object was replaced since the job was made (checked here: the body is not read).
            if not src.version_id and (why := newer_version(src, head)):
                raise superseded(src, why)
            if head.size > cap:
                raise JobFailed(
                    "InputTooLarge",
                    f"source is {head.size:,} bytes, over the {cap:,}-byte limit"
                    + ("" if self.s.jobs.reencode_oversize else " (re-encoding to fit is off)"),
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
            # Deleted since the job was made (enqueue checks that it exists): normal S3 life.
            version = f" version {src.version_id}" if src.version_id else ""
            raise SourceDeleted(
                f"source deleted: {src.uri}{version} does not exist ({e})"
            ) from None
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
