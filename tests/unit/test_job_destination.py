"""The destination as a run finds it (`worker.job.destination`): this job's output under any
extension, what the conditional write expects at each key, and a backfill that asks nothing."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from tests.unit.job_fakes import DEST, client_error, fakes, png
from worker.contract import META_JOB_ID, JobSpec, S3Object
from worker.job import destination
from worker.job.destination import Found, output_keys
from worker.outcomes import JobFailed
from worker.storage import AccessDenied

JPG_DEST = S3Object.parse("s3://photos-upscaled/cat@2x.jpg")


def test_output_keys_are_the_destination_and_each_format_extension() -> None:
    keys = output_keys("a/cat@2x.jpg")
    assert keys[0] == "a/cat@2x.jpg" and "a/cat@2x.png" in keys and len(keys) == len(set(keys))
    assert output_keys("a/noext") == ["a/noext"]


async def test_nothing_there_is_seen_as_nothing_at_every_key(r: Redis) -> None:
    async with fakes(r) as f:
        job = await f.job()
        with destination.looking(job) as look:
            assert await destination.already_stored(job, look) is None
            seen = await look.seen()
        assert seen == dict.fromkeys(output_keys(DEST.key))  # If-None-Match at each
        # one request when there is none: a LIST of the stem's keys
        assert [op for op, _ in f.s3.calls] == ["list_objects_v2"]


async def test_this_jobs_output_is_found_under_another_extension(r: Redis) -> None:
    async with fakes(r) as f:
        job = await f.job(JobSpec(source=S3Object.parse("s3://photos/cat.png"), dest=JPG_DEST))
        png_key = S3Object(bucket=JPG_DEST.bucket, key="cat@2x.png")
        stored = f.s3.put(png_key, png(), metadata={META_JOB_ID: job.id})
        other = f.s3.put(JPG_DEST, png(4, 4), metadata={META_JOB_ID: "uq-someone-else"})
        with destination.looking(job) as look:
            found = await destination.already_stored(job, look)
            seen = await look.seen()
        assert isinstance(found, Found) and found.dest == png_key
        assert found.head.etag == stored.etag
        assert seen is not None
        assert (seen[png_key.key], seen[JPG_DEST.key]) == (stored.etag, other.etag)


async def test_a_backfill_that_listed_the_destination_asks_nothing(r: Redis) -> None:
    async with fakes(r) as f:
        job = await f.job(
            JobSpec(source=S3Object.parse("s3://photos/cat.png"), dest=DEST, dest_listed=True)
        )
        f.s3.put(DEST, png(), metadata={META_JOB_ID: job.id})  # not looked at: it listed none
        with destination.looking(job) as look:
            assert await destination.already_stored(job, look) is None
            assert await look.seen() == dict.fromkeys(output_keys(DEST.key))
        assert f.s3.calls == []


async def test_a_destination_it_may_not_read_fails_the_job(r: Redis) -> None:
    async with fakes(r) as f:
        job = await f.job()
        f.s3.fail["list_objects_v2"] = client_error("AccessDenied", 403)
        with destination.looking(job) as look:
            with pytest.raises(JobFailed) as e:
                await destination.already_stored(job, look)
            assert await look.seen() is None  # unknown: a resumed run writes unconditionally
        assert e.value.error_class == "DestinationAccessDenied"
        with pytest.raises(AccessDenied):
            f.s3.fail["list_objects_v2"] = client_error("AccessDenied", 403)
            await destination.find(job)
