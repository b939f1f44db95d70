"""The Ideogram direct route's buy step (`buy.SubmitThenRead`) on the real ledger: the
generation id journaled before the wait, the generation read until it ends (billed at the cost
it reports, or free when failed), a run that resumes by reading it, and a submit whose answer
never came: counted as possibly billed and never submitted again blindly
(`worker.job.lost_submit`)."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from tests.unit.job_fakes import PRICE, FakeUpstream, fakes, paid_answer
from worker.job import buy, finish, source
from worker.job.admit import admit
from worker.job.lost_submit import SubmitLost
from worker.job.run import Job, Run, start
from worker.keys import Keys
from worker.outcomes import JobWaits
from worker.upstream import errors as ue
from worker.upstream.base import CallResult

DIRECT: dict[str, Any] = {"route": "ideogram", "ideogram_poll_interval_s": 0.2}
REPORTED = 45_000  # usage_cost_usd_micros: not the configured price


def generation(gid: str = "gen_1") -> CallResult:
    return CallResult(request_id="req_1", pending_id=gid)


def completed(cost: int | None = REPORTED) -> CallResult:
    done = paid_answer()
    done.cost_micros = cost
    return done


async def next_run(f: Any, job: Job) -> tuple[Job, Run]:
    again = Job.new(f.rt, job.spec, job.id)
    run = await start(again)
    assert isinstance(run, Run)
    return again, run


async def test_the_generation_id_is_journaled_then_read_and_its_reported_cost_recorded(
    r: Redis,
) -> None:
    up = FakeUpstream(needs_bytes=True).answer(generation())
    up.polls.extend([CallResult(request_id=None, pending_id="gen_1"), completed()])
    async with fakes(r, up, **DIRECT) as f:
        job, _ = await f.started()
        bought = await f.bought(job)
        assert up.polled == ["gen_1", "gen_1"] and len(up.sent) == 1
        assert bought.paid.cost_micros == REPORTED
        assert await f.field(job, "cost_micros") == str(REPORTED)
        assert await f.field(job, "possible_micros") is None
        assert await f.inflight() == 0


async def test_a_failed_generation_is_free_and_only_then_submitted_again(r: Redis) -> None:
    up = FakeUpstream(needs_bytes=True).answer(generation())
    up.polls.append(ue.UpstreamJobFailed("generation gen_1 failed: boom"))
    async with fakes(r, up, **DIRECT) as f:
        job, _ = await f.started()
        with pytest.raises(ue.UpstreamJobFailed):
            await f.bought(job)
        assert await r.hget(Keys.call(job.id), "state") == b"refused"  # type: ignore[misc]  # redis-py's async stubs
        assert await f.field(job, "cost_micros") is None
        assert await f.field(job, "possible_micros") is None
        await f.ledger.wait(job.id, job.token, "test", "", 0)
        again, run = await next_run(f, job)
        assert await buy.resume(again, run) is None  # a new submission


async def test_a_run_killed_while_reading_resumes_by_reading_never_submitting(r: Redis) -> None:
    up = FakeUpstream(needs_bytes=True).answer(generation())
    up.polls.append(completed(None))
    async with fakes(r, up, **DIRECT) as f:
        job, _ = await f.started()
        slot = await admit(job)
        src = await source.read(job, slot)
        paid = await buy._send(job, slot, src.image)  # journaled; then the run went away
        assert paid.pending_id == "gen_1"
        await f.ledger.wait(job.id, job.token, "test", "", 0)
        again, run = await next_run(f, job)
        resumed = await buy.resume(again, run)
        assert resumed is not None and resumed.paid.cost_micros == PRICE  # no cost reported
        assert up.polled == ["gen_1"] and len(up.sent) == 1


async def test_a_lost_submit_is_possibly_billed_and_fails_until_a_person_retries(
    r: Redis,
) -> None:
    up = FakeUpstream(needs_bytes=True).answer(ue.OutcomeUnknown("connection lost"))
    async with fakes(r, up, **DIRECT) as f:
        job, _ = await f.started()
        with pytest.raises(SubmitLost) as lost:
            await f.bought(job)
        assert await f.field(job, "possible_micros") == str(PRICE)
        await finish.settle(job, lost.value, None)
        assert await f.field(job, "state") == "failed"
        assert await f.field(job, "error_class") == "SubmitLost"
        assert await f.field(job, "lost_call") == "1"
        assert len(up.sent) == 1
        # `upscale retry`: the person's decision; its run submits again
        await r.delete(Keys.arq_job(job.id))  # arq's own finish, once the run returned
        (res,) = await f.ledger.enqueue([job.spec], requeue_failed=True)
        assert res.outcome == "requeued", res
        again, run = await next_run(f, job)
        assert await buy.resume(again, run) is None
        up.answer(generation("gen_2"))
        up.polls.append(completed())
        bought = await f.bought(again)
        assert bought.paid.cost_micros == REPORTED and len(up.sent) == 2
        # the lost call stays possibly billed beside the new one's bill
        assert await f.field(job, "possible_micros") == str(PRICE)
        assert await f.field(job, "cost_micros") == str(REPORTED)


async def test_a_run_killed_on_the_wire_leaves_a_lost_submit_the_next_run_never_resends(
    r: Redis,
) -> None:
    up = FakeUpstream(needs_bytes=True)
    async with fakes(r, up, **DIRECT) as f:
        job, _ = await f.started()
        slot = await admit(job)
        await f.ledger.call_begin(job.id, job.token, slot.token, PRICE)  # journaled, then killed
        await f.ledger.wait(job.id, job.token, "test", "", 0)
        again, run = await next_run(f, job)
        with pytest.raises(SubmitLost):
            await buy.resume(again, run)
        assert await f.field(job, "possible_micros") == str(PRICE)  # counted once
        assert await r.hget(Keys.call(job.id), "state") == b"unknown"  # type: ignore[misc]  # redis-py's async stubs
        await f.ledger.wait(again.id, again.token, "test", "", 0)
        again2, run2 = await next_run(f, job)  # judged again: never sent, counted once
        with pytest.raises(SubmitLost):
            await buy.resume(again2, run2)
        assert await f.field(job, "possible_micros") == str(PRICE)
        assert up.sent == []


async def test_resubmit_waits_out_the_generation_time_first(r: Redis) -> None:
    up = FakeUpstream(needs_bytes=True).answer(ue.OutcomeUnknown("read timeout"))
    cfg = {**DIRECT, "ideogram_lost_submit": "resubmit", "ideogram_generation_s": 600}
    async with fakes(r, up, **cfg) as f:
        job, _ = await f.started()
        with pytest.raises(JobWaits) as waits:
            await f.bought(job)
        assert waits.value.reason == "submit_lost" and 590 < waits.value.wait_s <= 600
        await f.ledger.wait(job.id, job.token, "test", "", 0)
        again, run = await next_run(f, job)
        # once the generation time has passed since it left
        run = Run(run.attempts, run.paid, run.journal.model_copy(update={"sent_at": 0}))  # type: ignore[union-attr]  # journaled above
        assert await buy.resume(again, run) is None
