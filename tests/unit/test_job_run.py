"""The run's frame (`worker.job.run`): the lease at start, what the ledger hands a run, the
way back to the queue, and a stopping worker's hand-back. Real ledger on a redis-server."""

from __future__ import annotations

import asyncio

import pytest
from arq import Retry
from redis.asyncio import Redis

from tests.unit.job_fakes import fakes
from worker.contract import JobState
from worker.job.run import Job, Run, hand_back, running, start
from worker.ledger import CallJournal, PaidResult


async def test_a_job_without_a_record_ends_at_start(r: Redis) -> None:
    async with fakes(r) as f:
        job = await f.job()
        await r.flushdb()  # a Redis that lost the record
        assert await start(job) == {"state": JobState.FAILED, "error": "no ledger record"}


async def test_a_second_run_leaves_a_held_job_alone(r: Redis) -> None:
    async with fakes(r) as f:
        job, run = await f.started()
        assert run == Run(attempts=0, paid=None, journal=None)
        assert await f.field(job, "state") == JobState.RUNNING
        other = Job.new(f.rt, job.spec, job.id)  # another run of the same job
        with pytest.raises(Retry):
            await start(other)


async def test_a_final_job_is_not_run_again(r: Redis) -> None:
    async with fakes(r) as f:
        job, _ = await f.started()
        await f.ledger.finish(job.id, job.token, JobState.SUCCEEDED, {})
        again = Job.new(f.rt, job.spec, job.id)
        assert await start(again) == {"state": JobState.SUCCEEDED, "note": "already final"}


def test_what_the_journal_tells_a_new_run() -> None:
    paid = PaidResult(pending_id="job_1")
    pending = Run(0, paid, CallJournal(token="default/ab", state="pending"))
    assert (pending.pending_slot, pending.prefer) == ("default/ab", "")
    for state in ("unknown", "sent"):  # asked again on the key it went to
        unknown = Run(0, None, CallJournal(token="second/cd", state=state))
        assert (unknown.pending_slot, unknown.prefer) == ("", "second")
    assert (Run(0, None, None).pending_slot, Run(0, None, None).prefer) == ("", "")


async def test_hand_back_waits_without_an_attempt_and_a_fenced_run_has_nothing_to_hand(
    r: Redis,
) -> None:
    async with fakes(r) as f:
        job, _ = await f.started()
        await hand_back(job, "rate_limited", "429", 2.0)
        assert await f.field(job, "state") == JobState.WAITING
        assert await f.field(job, "wait_reason") == "rate_limited"
        assert await f.field(job, "attempts") in (None, "0")
        stale = Job.new(f.rt, job.spec, job.id)  # never held the lease
        await hand_back(stale, "storage", "S3 down")  # no error: the job is another run's


async def test_a_stopping_worker_hands_the_job_back(r: Redis) -> None:
    async with fakes(r) as f:
        job, run = await f.started()

        async def steps() -> None:
            async with running(job, run):
                assert f.rt.runs == {job.id: job.token}  # the heartbeat renews it
                await asyncio.Event().wait()

        task = asyncio.create_task(steps())
        while not f.rt.runs:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert f.rt.runs == {}
        assert await f.field(job, "state") == JobState.WAITING
        assert await f.field(job, "wait_reason") == "shutdown"
