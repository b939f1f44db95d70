"""Final records on a real Redis: compacted, retired (a batch's done list, or the retention),
never expiring while they hold money; cancel, at once or after the paid call is stored."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from worker.contract import JobSpec, JobState, S3Object, UpscaleParams
from worker.keys import QUEUES, Keys
from worker.ledger import Fenced, Ledger, PaidResult
from worker.ledger.batches import cancel_batch
from worker.ledger.transitions import Cancelled

PRICE = 60_000
RETENTION_MS = 3_600_000


def _spec(n: int = 1, batch: str | None = None) -> JobSpec:
    return JobSpec(
        source=S3Object.parse(f"s3://photos/img{n}.png"),
        dest=S3Object.parse(f"s3://photos-upscaled/img{n}@2x.png"),
        params=UpscaleParams(prompt="sharper", resemblance=40),
        batch=batch,
        tags={"team": "web"},
    )


async def _job(r: Redis, n: int = 1, batch: str | None = None) -> tuple[Ledger, str]:
    ledger = Ledger(r, retention_ms=RETENTION_MS)
    (res,) = await ledger.enqueue([_spec(n, batch)])
    return ledger, res.job_id


async def _fields(r: Redis, job: str) -> dict[str, str]:
    h = await r.hgetall(Keys.job(job))  # type: ignore[misc]  # redis-py's async stubs
    return {k.decode(): v.decode() for k, v in h.items()}


async def test_the_request_is_stored_once_and_read_back_whole(r: Redis) -> None:
    ledger, job = await _job(r)
    payload = await r.get(Keys.arq_job(job))
    assert payload is not None and b"photos" not in payload  # arq's payload names no spec
    assert "spec" not in await _fields(r, job)
    assert await ledger.spec(job) == _spec()


async def test_a_final_record_is_compacted_and_expires_after_the_retention(r: Redis) -> None:
    ledger, job = await _job(r)
    await ledger.start(job, "run", 20_000)
    await ledger.finish(job, "run", JobState.SUCCEEDED, {"output_bytes": 10, "t_total_ms": 5})
    fields = await _fields(r, job)
    assert fields["state"] == "succeeded" and fields["source"] == "s3://photos/img1.png"
    assert not {"params", "tags", "run_token", "running_at", "queued_at"} & set(fields)
    assert 0 < await r.pttl(Keys.job(job)) <= RETENTION_MS


async def test_a_batch_record_waits_for_its_report_on_the_done_list(r: Redis) -> None:
    ledger, job = await _job(r, batch="b1")
    assert await r.smembers(Keys.batch_open("b1")) == {job.encode()}  # type: ignore[misc]  # redis-py's async stubs
    await ledger.start(job, "run", 20_000)
    await ledger.finish(job, "run", JobState.FAILED, {"error": "boom"})
    assert await r.pttl(Keys.job(job)) == -1
    assert await r.lrange(Keys.batch_done("b1"), 0, -1) == [job.encode()]  # type: ignore[misc]  # redis-py's async stubs
    assert await r.scard(Keys.batch_open("b1")) == 0  # type: ignore[misc]  # redis-py's async stubs
    # a failed record keeps what a retry needs; the retry re-opens it, once on the list
    assert (await _fields(r, job))["params"]
    await r.delete(Keys.arq_job(job))  # arq's own finish, once the run returned
    (res,) = await ledger.enqueue([_spec(1, "b1")], requeue_failed=True)
    assert res.outcome == "requeued"
    await ledger.start(job, "run2", 20_000)
    await ledger.finish(job, "run2", JobState.SUCCEEDED, {})
    assert await r.lrange(Keys.batch_done("b1"), 0, -1) == [job.encode()]  # type: ignore[misc]  # redis-py's async stubs


async def test_a_record_holding_a_possibly_billed_call_never_expires(r: Redis) -> None:
    ledger, job = await _job(r)
    await ledger.start(job, "run", 20_000)
    await ledger.call_begin(job, "run", "default/s1", PRICE)
    await ledger.call_unknown(job, "default/s1")
    await ledger.finish(job, "run", JobState.FAILED, {"error": "gave up"})
    assert await r.pttl(Keys.job(job)) == -1


async def test_a_record_retried_after_it_expired_runs_again_without_a_ttl(r: Redis) -> None:
    ledger, job = await _job(r)
    await ledger.start(job, "run", 20_000)
    await ledger.finish(job, "run", JobState.FAILED, {"error": "boom"})
    assert await r.pttl(Keys.job(job)) > 0
    await r.delete(Keys.arq_job(job))  # arq's own finish, once the run returned
    await ledger.enqueue([_spec()], requeue_failed=True)
    assert await r.pttl(Keys.job(job)) == -1


async def test_cancel_a_queued_job_frees_its_queue_entry_and_payload(r: Redis) -> None:
    ledger, job = await _job(r)
    assert await ledger.cancel([job, "uq-nope"]) == ["cancelled", "missing"]
    assert (await _fields(r, job))["state"] == "cancelled"
    assert await r.zscore(QUEUES["live"], job) is None and not await r.exists(Keys.arq_job(job))
    assert await ledger.cancel([job]) == ["final"]
    # a worker that picks it up anyway finds it final
    assert (await ledger.start(job, "run", 20_000)).outcome == "final"


async def test_cancel_before_the_call_fences_the_run(r: Redis) -> None:
    ledger, job = await _job(r)
    await ledger.start(job, "run", 20_000)
    assert await ledger.cancel([job]) == ["cancelled"]
    with pytest.raises(Fenced):
        await ledger.call_begin(job, "run", "default/s1", PRICE)
    assert await r.hget(Keys.call(job), "state") is None  # type: ignore[misc]  # no call journaled


async def test_cancel_during_a_call_stores_what_was_paid_then_ends_cancelled(r: Redis) -> None:
    ledger, job = await _job(r)
    await ledger.start(job, "run", 20_000)
    await ledger.call_begin(job, "run", "default/s1", PRICE)
    assert await ledger.cancel([job]) == ["after_call"]
    await ledger.call_answered(job, "default/s1", PaidResult(cost_micros=PRICE, request_id="r1"))
    await ledger.finish(job, "run", JobState.SUCCEEDED, {"output_bytes": 10})
    fields = await _fields(r, job)
    assert fields["state"] == "cancelled" and fields["output_bytes"] == "10"
    assert "paid output was stored" in fields["note"] and fields["cost_micros"] == str(PRICE)


async def test_cancel_during_a_call_that_fails_ends_without_another_call(r: Redis) -> None:
    ledger, job = await _job(r)
    await ledger.start(job, "run", 20_000)
    await ledger.call_begin(job, "run", "default/s1", PRICE)
    assert await ledger.cancel([job]) == ["after_call"]
    await ledger.call_refused(job, "default/s1", "r1")
    with pytest.raises(Cancelled):
        await ledger.wait(job, "run", "rate", "429", 1.0)
    assert (await _fields(r, job))["state"] == "cancelled"
    assert await r.zscore(QUEUES["live"], job) is None


async def test_cancel_a_batch_refuses_new_jobs_into_it(r: Redis) -> None:
    ledger = Ledger(r, retention_ms=RETENTION_MS)
    await ledger.enqueue([_spec(n, "wrong") for n in range(30)])
    summary = await cancel_batch(r, ledger, "wrong")
    assert summary.cancelled == 30 and await r.zcard(QUEUES["live"]) == 0
    (res,) = await ledger.enqueue([_spec(99, "wrong")])
    assert res.outcome == "refused"
    states = await r.hgetall(Keys.batch("wrong"))  # type: ignore[misc]  # redis-py's async stubs
    assert int(states[b"cancelled"]) == 30 and int(states[b"queued"]) == 0


async def test_no_transition_creates_a_record(r: Redis) -> None:
    ledger, job = await _job(r)
    await ledger.start(job, "run", 20_000)
    await r.delete(Keys.job(job))  # a Redis that lost it
    await ledger.reclaim()
    with pytest.raises(Fenced):
        await ledger.wait(job, "run", "rate", "429", 1.0)
    assert not await r.exists(Keys.job(job))


async def _stalled_past_its_lease(ledger: Ledger, r: Redis, job: str) -> None:
    """Run a journals its call, then stalls (SIGSTOP, GC, a frozen VM) past its lease: a live
    worker reclaims the job and counts the call as possibly billed."""
    await ledger.start(job, "run-a", 50)
    await ledger.call_begin(job, "run-a", "default/a", PRICE)
    await asyncio.sleep(0.1)
    assert await ledger.reclaim() == [job]


def _paid(rid: str) -> PaidResult:
    return PaidResult(cost_micros=PRICE, request_id=rid)


async def test_a_stale_answer_is_counted_once_and_leaves_the_newer_call_alone(r: Redis) -> None:
    ledger, job = await _job(r)
    await _stalled_past_its_lease(ledger, r, job)
    await ledger.start(job, "run-b", 20_000)
    await ledger.call_begin(job, "run-b", "default/b", PRICE)
    # run a wakes with its answer: billed, counted once (not possibly billed as well)
    assert await ledger.call_answered(job, "default/a", _paid("r-a"), token="run-a") == "stale"
    fields = await _fields(r, job)
    assert fields["cost_micros"] == str(PRICE) and fields.get("possible_micros", "0") == "0"
    # the newer call's answer is still its own, and counted: two calls billed, two counted
    assert await ledger.call_answered(job, "default/b", _paid("r-b"), token="run-b") in (
        "saved",
        "duplicate",
    )
    assert (await _fields(r, job))["cost_micros"] == str(2 * PRICE)


async def test_an_answer_saved_after_its_run_was_reclaimed_settles_its_possible_charge(
    r: Redis,
) -> None:
    ledger, job = await _job(r)
    await _stalled_past_its_lease(ledger, r, job)
    reply = await ledger.call_answered(job, "default/a", _paid("r-a"), token="run-a")
    assert reply == "fenced"  # saved, but run a must not write the output
    fields = await _fields(r, job)
    assert fields["cost_micros"] == str(PRICE) and fields.get("possible_micros", "0") == "0"
    assert await r.exists(Keys.paid(job))  # the next run stores it without a new call


async def test_an_answer_for_a_final_job_is_counted_but_keeps_no_result(r: Redis) -> None:
    ledger, job = await _job(r)
    await _stalled_past_its_lease(ledger, r, job)
    await ledger.start(job, "run-b", 20_000)
    await ledger.call_begin(job, "run-b", "default/b", PRICE)
    await ledger.call_answered(job, "default/b", _paid("r-b"), token="run-b")
    await ledger.finish(
        job, "run-b", JobState.FAILED, {"error": "x"}
    )  # keeps its fields for the check
    assert await ledger.call_answered(job, "default/a", _paid("r-a"), token="run-a") == "stale"
    assert (await _fields(r, job))["cost_micros"] == str(2 * PRICE)


async def test_a_stale_runs_lost_call_leaves_the_newer_call_journaled(r: Redis) -> None:
    ledger, job = await _job(r)
    await _stalled_past_its_lease(ledger, r, job)  # reclaim counted call a as possibly billed
    await ledger.start(job, "run-b", 20_000)
    await ledger.call_begin(job, "run-b", "default/b", PRICE)
    await ledger.call_unknown(job, "default/a")  # run a wakes: its connection was lost
    await ledger.call_refused(job, "default/a", None)
    journal = await ledger.journal(job)
    assert journal is not None and journal.state == "sent" and journal.token == "default/b"
    assert (await _fields(r, job))["possible_micros"] == str(PRICE)  # counted once


async def test_writes_for_a_record_redis_lost_do_not_recreate_it(r: Redis) -> None:
    ledger, job = await _job(r)
    await ledger.start(job, "run", 20_000)
    await ledger.call_begin(job, "run", "default/s", PRICE)
    await r.delete(Keys.job(job))  # a restart without persistence
    await ledger.call_unknown(job, "default/s")
    assert await ledger.call_answered(job, "default/s", _paid("r")) == "orphan"
    await ledger.reclaim()
    assert not await r.exists(Keys.job(job))
    assert int(await r.get(Keys.spend_total) or 0) >= PRICE  # the fleet's books still count it


async def test_calls_per_minute_count_calls_that_left_not_admissions(r: Redis) -> None:
    ledger, job = await _job(r)
    up = Keys.up("default")
    await r.zadd(up.rate, {"default/never-sent": 1, "default/s1": 1})  # two admissions
    await ledger.start(job, "run", 20_000)
    await ledger.call_begin(job, "run", "default/s1", PRICE)
    assert await r.zcard(up.rate) == 2 and await r.zrange(up.sent, 0, -1) == [b"default/s1"]
