"""The buy step (`worker.job.buy`) on the real ledger and flow control: the call journaled
before it leaves, its answer saved with its spend, every other outcome recorded (refused,
possibly billed), an async upstream job journaled then polled, and a run that resumes what an
earlier run paid for without a new call."""

from __future__ import annotations

import httpx
import pytest
from redis.asyncio import Redis

from tests.unit.job_fakes import PRICE, FakeUpstream, fakes, paid_answer
from worker.job import buy, source
from worker.job.admit import admit
from worker.job.run import Job, Run, start
from worker.keys import Keys
from worker.ledger import Fenced, KeyPaused
from worker.outcomes import JobFailed
from worker.upstream import errors as ue
from worker.upstream.base import CallResult


async def test_a_call_is_journaled_sent_and_its_answer_saved_with_its_spend(r: Redis) -> None:
    async with fakes(r) as f:
        job, _ = await f.started()
        bought = await f.bought(job)
        assert len(bought.paid.outputs) == 1 and bought.paid.cost_micros == PRICE
        assert bought.source is not None and set(bought.timings_ms) >= {"read", "call"}
        assert [idem for _, idem in f.upstream.sent] == [f"{job.id}:1"]
        assert await f.field(job, "cost_micros") == str(PRICE)
        assert await f.field(job, "billed_calls") == "1"
        assert await r.exists(Keys.paid(job.id))  # saved before anything else
        assert await r.hget(Keys.call(job.id), "state") == b"answered"  # type: ignore[misc]  # redis-py's async stubs
        assert await f.inflight() == 0


async def test_an_error_answer_returns_the_reservation(r: Redis) -> None:
    async with fakes(r, FakeUpstream().answer(ue.TransientError("boom", status=500))) as f:
        job, _ = await f.started()
        with pytest.raises(ue.TransientError):
            await f.bought(job)
        assert await r.hget(Keys.call(job.id), "state") == b"refused"  # type: ignore[misc]  # redis-py's async stubs
        assert await f.field(job, "cost_micros") is None
        assert await f.field(job, "possible_micros") is None
        assert await f.inflight() == 0


async def test_no_answer_is_possibly_billed_and_asked_again_under_its_key(r: Redis) -> None:
    async with fakes(r, FakeUpstream().answer(ue.OutcomeUnknown("read timeout"))) as f:
        job, _ = await f.started()
        with pytest.raises(ue.OutcomeUnknown):
            await f.bought(job)
        assert await f.field(job, "possible_micros") == str(PRICE)
        await f.ledger.wait(job.id, job.token, "test", "", 0)
        again = Job.new(f.rt, job.spec, job.id)  # the next run
        run = await start(again)
        assert isinstance(run, Run) and run.prefer == "default"
        assert await buy.resume(again, run) is None  # an unknown call is asked again
        await f.bought(again)
        assert [idem for _, idem in f.upstream.sent] == [f"{job.id}:1", f"{job.id}:1"]


async def test_an_async_upstream_job_is_journaled_then_polled(r: Redis) -> None:
    up = FakeUpstream().answer(CallResult(request_id="r1", pending_id="job_1"))
    up.polls.extend([paid_answer()])
    async with fakes(r, up) as f:
        job, _ = await f.started()
        bought = await f.bought(job)
        assert up.polled == ["job_1"] and bought.paid.pending_id is None
        assert bought.paid.cost_micros == PRICE  # billed when it completed
        assert await f.field(job, "cost_micros") == str(PRICE)


async def test_a_new_run_resumes_what_an_earlier_run_paid_for_without_a_call(r: Redis) -> None:
    up = FakeUpstream().answer(CallResult(request_id="r1", pending_id="job_1"))
    up.polls.extend([ue.TransientError("poll failed"), paid_answer()])
    async with fakes(r, up) as f:
        job, _ = await f.started()
        slot = await admit(job)
        src = await source.read(job, slot)
        # the earlier run: its call answered 202 (journaled), then the run went away
        paid = await buy._send(job, slot, src.image)
        assert paid.pending_id == "job_1"
        assert await r.hget(Keys.call(job.id), "state") == b"pending"  # type: ignore[misc]  # redis-py's async stubs
        await f.ledger.wait(job.id, job.token, "test", "", 0)
        again = Job.new(f.rt, job.spec, job.id)
        run = await start(again)
        assert isinstance(run, Run) and run.pending_slot == slot.token
        resumed = await buy.resume(again, run)  # polls on after a failed poll
        assert resumed is not None and resumed.paid.cost_micros == PRICE
        assert up.polled == ["job_1", "job_1"] and len(up.sent) == 1
        # and a paid result is resumed as it is
        await f.ledger.wait(again.id, again.token, "test", "", 0)
        third = Job.new(f.rt, job.spec, job.id)
        run = await start(third)
        assert isinstance(run, Run)
        assert (await buy.resume(third, run)) == buy.Bought(resumed.paid)
        assert len(up.sent) == 1


async def test_a_run_that_lost_its_lease_saves_the_money_and_stops(r: Redis) -> None:
    async with fakes(r) as f:
        job, _ = await f.started()

        async def reclaimed() -> None:  # a newer run took the job while the call was out
            await r.hset(Keys.job(job.id), "run_token", "newer-run")  # type: ignore[misc]  # redis-py's async stubs

        f.upstream.on_send = reclaimed
        with pytest.raises(Fenced):
            await f.bought(job)
        assert await f.field(job, "cost_micros") == str(PRICE)
        assert await r.exists(Keys.paid(job.id))  # the newer run stores it


async def test_a_call_journaled_after_its_key_paused_is_not_sent(r: Redis) -> None:
    async with fakes(r) as f:
        job, _ = await f.started()
        slot = await admit(job)
        src = await source.read(job, slot)
        f.rt.flow.pause_seen("default", "credits")  # a 402 reached this process meanwhile
        with pytest.raises(KeyPaused):
            await buy.buy(job, slot, src)
        assert f.upstream.sent == [] and await f.inflight() == 0


async def test_a_job_cancelled_before_its_call_makes_none(r: Redis) -> None:
    async with fakes(r) as f:
        job, _ = await f.started()
        slot = await admit(job)
        src = await source.read(job, slot)
        assert await f.ledger.cancel([job.id]) == ["cancelled"]
        with pytest.raises(Fenced):
            await buy.buy(job, slot, src)
        assert f.upstream.sent == [] and await f.inflight() == 0
        assert await f.field(job, "state") == "cancelled"


async def test_a_source_the_upstream_cannot_fetch_but_we_can_is_a_setting_to_fix(
    r: Redis,
) -> None:
    refused = ue.InvalidRequest("could not download the image", status=400)
    async with fakes(
        r, FakeUpstream().answer(refused), downloads=lambda _: httpx.Response(206)
    ) as f:
        job, _ = await f.started()
        with pytest.raises(JobFailed) as e:
            await f.bought(job)
        assert e.value.error_class == "SourceUnreachable"
        assert "UPSCALE_IMAGE_MODE=data_url" in e.value.message
