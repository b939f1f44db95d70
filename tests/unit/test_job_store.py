"""The store step (`worker.job.store`): the paid result into S3 with its provenance, written
only over what the run saw there; a result that can give no output is dropped through the
fenced `discard_paid` script (the next attempt pays again), any other failure keeps it."""

from __future__ import annotations

import base64

import pytest
from redis.asyncio import Redis

from tests.unit.job_fakes import DEST, PRICE, FakeUpstream, client_error, fakes, png
from worker.contract import META_JOB_ID
from worker.job import buy, destination
from worker.job.destination import Found
from worker.job.run import Job
from worker.job.store import Stored, store
from worker.keys import Keys
from worker.ledger import Fenced, PaidOutput
from worker.outcomes import JobFailed, Superseded
from worker.upstream import errors as ue
from worker.upstream.base import CallResult, UpstreamOutput


async def _store(job: Job, bought: buy.Bought) -> Stored | Found:
    with destination.looking(job) as look:
        return await store(job, bought, look)


async def test_the_paid_result_is_stored_with_its_provenance(r: Redis) -> None:
    async with fakes(r) as f:
        job, _ = await f.started()
        stored = await _store(job, await f.bought(job))
        assert isinstance(stored, Stored) and stored.output.dest == DEST
        assert stored.seed == 7 and stored.output.image.resolution == "16x16"
        obj = f.s3.get(DEST)
        assert obj is not None and obj.content_type == "image/png"
        assert obj.metadata[META_JOB_ID] == job.id
        assert obj.metadata["upscale-cost-usd"] == f"{PRICE / 1e6:.4f}"
        assert obj.metadata["upscale-resolution"] == "16x16"


@pytest.mark.parametrize("ours", [True, False])
async def test_a_destination_written_since_the_run_looked_is_not_overwritten(
    r: Redis, ours: bool
) -> None:
    async with fakes(r) as f:
        job, _ = await f.started()
        bought = await f.bought(job)
        with destination.looking(job) as look:
            assert await destination.already_stored(job, look) is None  # nothing there
            # meanwhile another writer: a run of this job that overtook it, or another job
            by = job.id if ours else "uq-newer-version"
            theirs = f.s3.put(DEST, png(4, 4), metadata={META_JOB_ID: by})
            if ours:
                found = await store(job, bought, look)
                assert isinstance(found, Found) and found.head.etag == theirs.etag
            else:
                with pytest.raises(Superseded):
                    await store(job, bought, look)
        assert f.s3.get(DEST) == theirs  # not replaced
        assert await r.exists(Keys.paid(job.id))  # the paid result is not thrown away


@pytest.mark.parametrize("result", ["no output", "not an image"])
async def test_a_result_that_gives_no_output_is_dropped_for_a_new_call(
    r: Redis, result: str
) -> None:
    outputs = (
        [] if result == "no output" else [UpstreamOutput(b64=base64.b64encode(b"junk").decode())]
    )
    up = FakeUpstream().answer(CallResult(request_id="r1", outputs=outputs))
    async with fakes(r, up) as f:
        job, _ = await f.started()
        bought = await f.bought(job)
        assert await r.exists(Keys.paid(job.id))
        with pytest.raises(ue.ResultUnavailable):
            await _store(job, bought)
        assert not await r.exists(Keys.paid(job.id))
        assert f.s3.get(DEST) is None


async def test_a_run_that_lost_its_lease_drops_nothing(r: Redis) -> None:
    up = FakeUpstream().answer(CallResult(request_id="r1", outputs=[]))
    async with fakes(r, up) as f:
        job, _ = await f.started()
        bought = await f.bought(job)
        await r.hset(Keys.job(job.id), "run_token", "newer-run")  # type: ignore[misc]  # redis-py's async stubs
        with pytest.raises(Fenced):
            await _store(job, bought)
        assert await r.exists(Keys.paid(job.id))  # the newer run's to store
        with pytest.raises(Fenced):
            await f.ledger.discard_paid(job.id, job.token)


@pytest.mark.parametrize("case", ["unsafe", "denied"])
async def test_a_result_it_cannot_store_keeps_the_paid_result(r: Redis, case: str) -> None:
    async with fakes(r) as f:
        job, _ = await f.started()
        bought = await f.bought(job)
        if case == "unsafe":
            bought = buy.Bought(
                bought.paid.model_copy(update={"outputs": [PaidOutput(safe=False)]})
            )
        else:
            f.s3.fail["put_object"] = client_error("AccessDenied", 403)
        with pytest.raises(JobFailed) as e:
            await _store(job, bought)
        kind = "UnsafeContent" if case == "unsafe" else "DestinationAccessDenied"
        assert e.value.error_class == kind
        assert await r.exists(Keys.paid(job.id))  # kept: `upscale retry` stores it
