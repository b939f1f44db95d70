"""How a run ends (`worker.job.finish`) on the real ledger: the outcome table's row for what
a step raised (fail / skip / wait / attempt), a lost lease, a cancel, and the final record of
an output stored or found."""

from __future__ import annotations

import pytest
from arq import Retry
from redis.asyncio import Redis

from tests.unit.job_fakes import DEST, PRICE, FakeUpstream, fakes
from worker.contract import JobState
from worker.job import destination, finish, source
from worker.job.admit import admit
from worker.job.run import Job
from worker.job.store import Stored, store
from worker.ledger import Fenced
from worker.outcomes import JobFailed, JobWaits, Superseded
from worker.upstream import errors as ue
from worker.upstream.base import CallResult


async def test_a_failure_ends_failed_with_what_the_run_learnt(r: Redis) -> None:
    async with fakes(r) as f:
        job, _ = await f.started()
        src = await source.read(job, await admit(job))
        reply = await finish.settle(job, JobFailed("InputTooLarge", "too big"), src)
        assert reply == {"state": JobState.FAILED, "error": "too big"}
        assert await f.field(job, "state") == JobState.FAILED
        assert await f.field(job, "error_class") == "InputTooLarge"
        assert await f.field(job, "source_resolution") == "8x8"


async def test_nothing_to_do_ends_skipped(r: Redis) -> None:
    async with fakes(r) as f:
        job, _ = await f.started()
        reply = await finish.settle(job, Superseded("superseded: newer"), None)
        assert reply == {"state": JobState.SKIPPED, "error": "superseded: newer"}
        assert await f.field(job, "note") == "superseded: newer"
        assert await f.field(job, "error_class") is None


async def test_a_wait_goes_back_to_the_queue_without_an_attempt(r: Redis) -> None:
    async with fakes(r) as f:
        job, _ = await f.started()
        with pytest.raises(Retry):
            await finish.settle(job, JobWaits("storage", 5, "S3 down"), None)
        assert await f.field(job, "state") == JobState.WAITING
        assert await f.field(job, "wait_reason") == "storage"
        assert await f.field(job, "attempts") in (None, "0")


async def test_an_unexpected_error_uses_an_attempt_and_the_last_fails(r: Redis) -> None:
    async with fakes(r, max_attempts=2) as f:
        job, _ = await f.started()
        with pytest.raises(Retry):
            await finish.settle(job, RuntimeError("bug"), None)
        assert await f.field(job, "attempts") == "1"
        again = Job.new(f.rt, job.spec, job.id)
        await f.ledger.start(again.id, again.token, 20_000)
        reply = await finish.settle(again, RuntimeError("bug"), None)
        assert reply["state"] == JobState.FAILED
        assert await f.field(job, "error_class") == "RuntimeError"


async def test_a_run_that_lost_its_lease_writes_nothing(r: Redis) -> None:
    async with fakes(r) as f:
        job, _ = await f.started()
        assert await finish.settle(job, Fenced(job.id), None) == {"state": "fenced"}
        stale = Job.new(f.rt, job.spec, job.id)  # never held the lease
        assert await finish.settle(stale, JobFailed("X", "y"), None) == {"state": "fenced"}
        assert await f.field(job, "state") == JobState.RUNNING


async def test_a_job_cancelled_while_it_held_money_ends_cancelled_once_it_holds_none(
    r: Redis,
) -> None:
    up = FakeUpstream().answer(CallResult(request_id="r1", outputs=[]))
    async with fakes(r, up) as f:
        job, _ = await f.started()
        bought = await f.bought(job)  # paid: the cancel waits for it to be stored
        assert await f.ledger.cancel([job.id]) == ["after_call"]
        # it gives no output: dropped
        with pytest.raises(ue.ResultUnavailable) as e, destination.looking(job) as look:
            await store(job, bought, look)
        assert await finish.settle(job, e.value, None) == {"state": JobState.CANCELLED}
        assert await f.field(job, "state") == JobState.CANCELLED


async def test_a_stored_output_ends_succeeded_with_its_record(r: Redis) -> None:
    async with fakes(r) as f:
        job, _ = await f.started()
        with destination.looking(job) as look:
            stored = await store(job, await f.bought(job), look)
        assert isinstance(stored, Stored)
        reply = await finish.done(job, stored)
        assert reply == {
            "state": JobState.SUCCEEDED,
            "dest": DEST.uri,
            "bytes": stored.output.stored.size,
        }
        rec = await f.ledger.get(job.id)
        assert rec is not None and rec.state == JobState.SUCCEEDED
        assert rec.cost_usd == PRICE / 1e6 and rec.dest == DEST.uri
        assert await f.field(job, "source_resolution") == "8x8"


@pytest.mark.parametrize("paid", [True, False])
async def test_an_output_found_stored_ends_the_job_without_a_call(r: Redis, paid: bool) -> None:
    async with fakes(r) as f:
        job, _ = await f.started()
        if paid:  # an earlier run paid and stored it, then died before its final write
            with destination.looking(job) as look:
                await store(job, await f.bought(job), look)
        else:  # another job stored this job's output
            f.s3.put(DEST, b"png", metadata={"upscale-job-id": job.id})
        found = (await destination.find(job)).found
        assert found is not None
        reply = await finish.done(job, found)
        state = JobState.SUCCEEDED if paid else JobState.SKIPPED
        assert reply == {"state": state, "dest": DEST.uri}
        assert await f.field(job, "note") == "destination already holds this job's output"
