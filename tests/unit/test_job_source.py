"""The read-source step (`worker.job.source`): a checked, prepared source, handed to the
upstream as it takes it; every refusal gives the admitted slot back."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from redis.asyncio import Redis

from tests.unit.job_fakes import DEST, SRC, FakeUpstream, client_error, fakes, png
from worker.contract import META_JOB_ID, STAGING_PREFIX, JobSpec, S3Object
from worker.images import ImageRejected
from worker.job import source
from worker.job.admit import admit
from worker.outcomes import JobFailed, OwnOutput, SourceDeleted, Superseded


def _bmp() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "BMP")
    return buf.getvalue()


async def test_a_source_is_read_checked_and_sent_as_a_presigned_url(r: Redis) -> None:
    async with fakes(r) as f:
        job = await f.job()
        src = await source.read(job, await admit(job))
        assert src.fields == {"source_resolution": "8x8", "source_bytes": len(png())}
        assert src.info.format == "PNG" and src.staged is None and src.read_ms >= 0
        assert src.image.url and src.image.url.startswith("http://s3.test/photos/cat.png")
        assert src.image.data is None
        assert await f.inflight() == 1  # the slot stays with the call


async def test_an_upstream_that_takes_bytes_gets_the_bytes(r: Redis) -> None:
    async with fakes(r, FakeUpstream(needs_bytes=True)) as f:
        job = await f.job()
        src = await source.read(job, await admit(job))
        assert (src.image.data, src.image.filename, src.image.url) == (png(), "cat.png", None)


async def test_a_converted_input_is_staged_for_the_upstream_and_dropped_after(r: Redis) -> None:
    async with fakes(r) as f:
        bmp = S3Object(bucket=SRC.bucket, key="scan.bmp")
        f.s3.put(bmp, _bmp(), content_type="image/bmp")
        job = await f.job(JobSpec(source=bmp, dest=DEST))
        src = await source.read(job, await admit(job))
        assert src.staged == S3Object(bucket=DEST.bucket, key=f"{STAGING_PREFIX}{job.id}.png")
        assert src.fields["input_note"] == "BMP converted to PNG"
        staged = f.s3.get(src.staged)
        assert staged is not None and staged.metadata[META_JOB_ID] == job.id
        assert src.image.url and src.staged.key in src.image.url
        await source.drop_staged(job, src)
        assert f.s3.get(src.staged) is None


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("own output", OwnOutput),
        ("empty", JobFailed),
        ("replaced", Superseded),
        ("deleted", SourceDeleted),
        ("denied", JobFailed),
        ("not an image", ImageRejected),  # the outcome table: failed, InvalidImage
    ],
)
async def test_a_refused_source_gives_the_slot_back(
    r: Redis, case: str, error: type[Exception]
) -> None:
    async with fakes(r) as f:
        spec = JobSpec(source=SRC, dest=DEST)
        if case == "own output":
            f.s3.put(SRC, png(), metadata={META_JOB_ID: "uq-other"})
        elif case == "empty":
            f.s3.put(SRC, b"")
        elif case == "replaced":  # the job was made for another ETag of the key
            spec = JobSpec(source=S3Object.parse(SRC.uri, etag="0" * 32), dest=DEST)
        elif case == "deleted":
            f.s3.objects.clear()
        elif case == "denied":
            f.s3.fail["get_object"] = client_error("AccessDenied", 403)
        else:
            f.s3.put(SRC, b"\x89PNG not really")
        job = await f.job(spec)
        with pytest.raises(error) as e:
            await source.read(job, await admit(job))
        assert await f.inflight() == 0
        if case == "denied":
            assert isinstance(e.value, JobFailed) and e.value.error_class == "SourceAccessDenied"


async def test_a_newer_source_after_the_call_supersedes_the_paid_result(r: Redis) -> None:
    async with fakes(r) as f:
        current = f.s3.get(SRC)
        assert current is not None
        job = await f.job(JobSpec(source=S3Object.parse(SRC.uri, etag=current.etag), dest=DEST))
        await source.check_still_newest(job)  # still the job's version
        f.s3.put(SRC, png(color=(0, 0, 0)))  # replaced during the call
        with pytest.raises(Superseded):
            await source.check_still_newest(job)
        f.s3.objects.clear()  # deleted: nothing newer to overwrite
        await source.check_still_newest(job)
