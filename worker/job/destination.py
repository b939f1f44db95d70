"""The destination as the run finds it: is this job's output already there (idempotent
outputs), and what is at each key the output may be stored under (its write is conditional on
that: an overtaken writer replaces nothing)."""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from worker.contract import META_JOB_ID, S3Object
from worker.formats import EXTENSIONS, key_for
from worker.job.run import Job
from worker.outcomes import JobFailed
from worker.storage import AccessDenied, Head, SourceMissing, classify


@dataclass(frozen=True)
class Found:
    """This job's output, stored by an earlier or another run."""

    dest: S3Object  # where it is (another extension than asked, maybe)
    head: Head


@dataclass(frozen=True)
class Destination:
    found: Found | None
    # What is at each key the output may be stored under (None: nothing, else its ETag).
    seen: Mapping[str, str | None]


@dataclass(frozen=True)
class Look:
    """The look at the destination, started beside the run's start (one round trip off the
    path of every job). A backfill that listed the destination just before enqueue
    (`dest_listed`) found nothing there: nothing to ask."""

    pending: asyncio.Future[Destination] | None
    listed: Destination | None = None

    async def seen(self) -> Mapping[str, str | None] | None:
        """What the run saw at the destination, for its conditional write; None (unknown: the
        write is unconditional) if the look failed."""
        if self.listed is not None:
            return self.listed.seen
        with contextlib.suppress(Exception):
            return (await self.pending).seen if self.pending is not None else None
        return None


@contextlib.contextmanager
def looking(job: Job) -> Iterator[Look]:
    """Look at the destination for as long as the run lasts; an unused look is dropped."""
    if job.spec.dest_listed:
        nothing = dict.fromkeys(output_keys(job.spec.dest.key))
        yield Look(pending=None, listed=Destination(found=None, seen=nothing))
        return
    pending = asyncio.ensure_future(find(job))
    try:
        yield Look(pending)
    finally:
        if not pending.done():
            pending.cancel()
        elif not pending.cancelled():
            pending.exception()  # read: an unused failure is not an error


async def already_stored(job: Job, look: Look) -> Found | None:
    """This job's output if the destination holds it (then the job ends with it: no call)."""
    if look.pending is None:
        return None
    try:
        return (await look.pending).found
    except AccessDenied as e:
        raise JobFailed("DestinationAccessDenied", str(e)) from None


async def find(job: Job) -> Destination:
    """This job's output (its job id in the metadata), whatever extension it was stored
    under. One request when there is none, the common case: a HEAD when the destination names
    no format, else one LIST of its stem's keys (any extension, one request, where a HEAD per
    extension would be seven); the keys it finds are HEADed for the job id."""
    dest, storage = job.spec.dest, job.rt.storage
    candidates = keys = output_keys(dest.key)
    if len(keys) > 1:
        keys = await _listed(job, dest.bucket, posixpath.splitext(dest.key)[0] + ".", keys)
    objs = [S3Object(bucket=dest.bucket, key=k) for k in keys]
    heads = await asyncio.gather(*(storage.head(o) for o in objs))
    seen: dict[str, str | None] = dict.fromkeys(candidates)
    seen.update({o.key: h.etag for o, h in zip(objs, heads, strict=True) if h})
    found = next(
        (
            Found(obj, head)
            for obj, head in zip(objs, heads, strict=True)
            if head is not None and head.metadata.get(META_JOB_ID) == job.id
        ),
        None,
    )
    return Destination(found=found, seen=seen)


def output_keys(dest_key: str) -> list[str]:
    """Every key this job's output can be stored under: the destination's, and the same stem
    with the extension of each format the output policy may store (`formats.key_for`: a `.jpg`
    destination holding PNG is stored as `.png`). A key naming no format is used as it is."""
    keys = [dest_key]
    for fmt in EXTENSIONS:
        if (key := key_for(dest_key, fmt)) not in keys:
            keys.append(key)
    return keys


async def _listed(job: Job, bucket: str, prefix: str, keys: list[str]) -> list[str]:
    """Those of `keys` (all under `prefix`) that exist, in their order. A listing cut short
    (over 1,000 keys share the prefix) cannot prove absence: then all of them."""
    try:
        page = await asyncio.to_thread(
            job.rt.storage.s3.list_objects_v2, Bucket=bucket, Prefix=prefix
        )
    except (ClientError, BotoCoreError) as e:
        err = classify(e, f"list s3://{bucket}/{prefix}")
        if isinstance(err, SourceMissing):  # no such bucket: no output in it either
            return []
        raise err from None
    if page.get("IsTruncated"):
        return keys
    present = {str(o["Key"]) for o in page.get("Contents", [])}
    return [k for k in keys if k in present]
