"""The ledger's transitions on a real Redis (no S3, no simulator): leases, fencing, the call
journal's money rules, reclaim and heal."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from worker.contract import JobSpec, JobState, Lane, S3Object
from worker.flow.slots import Slots
from worker.keys import ARQ_IN_PROGRESS_PREFIX, PREFIX, QUEUES, Keys, first_of
from worker.ledger import Fenced, Ledger, PaidOutput, PaidResult
from worker.lua import register

PRICE = 60_000  # micro-USD


def _spec(n: int = 1, lane: Lane = "live") -> JobSpec:
    return JobSpec(
        source=S3Object.parse(f"s3://photos/img{n}.png"),
        dest=S3Object.parse(f"s3://photos-upscaled/img{n}@2x.png"),
        lane=lane,
    )


async def _enqueued(r: Redis, n: int = 1) -> tuple[Ledger, str]:
    ledger = Ledger(r)
    (res,) = await ledger.enqueue([_spec(n)])
    return ledger, res.job_id


async def _h(r: Redis, job_id: str, field: str) -> str | None:
    v = await r.hget(Keys.job(job_id), field)  # type: ignore[misc]  # redis-py's async stubs
    return v.decode() if v else None


async def _dies_mid_call(ledger: Ledger, job: str, run: str, slot: str) -> None:
    """A run journals its call and dies; its lease runs out and a live worker reclaims it."""
    await ledger.start(job, run, 50)
    await ledger.call_begin(job, run, slot, PRICE)
    await asyncio.sleep(0.1)
    await ledger.reclaim()


async def test_start_takes_the_lease_and_a_second_run_is_refused(r: Redis) -> None:
    ledger, job = await _enqueued(r)
    st = await ledger.start(job, "run-a", 20_000)
    assert st.outcome == "ok" and st.paid is None
    assert await _h(r, job, "state") == "running"
    assert (await ledger.start(job, "run-b", 20_000)).outcome == "busy"
    assert await ledger.heartbeat({job: "run-a"}, 20_000) == []
    assert await ledger.heartbeat({job: "run-b"}, 20_000) == [job]


async def test_an_expired_run_is_reclaimed_and_fenced(r: Redis) -> None:
    ledger, job = await _enqueued(r)
    await ledger.start(job, "run-a", 50)
    await r.zrem(QUEUES["live"], job)  # as if arq had lost track of it too
    await asyncio.sleep(0.1)
    assert await ledger.reclaim() == [job]
    assert await _h(r, job, "state") == "queued"
    assert await r.zscore(QUEUES["live"], job) is not None
    assert await r.exists(Keys.arq_job(job))
    # the stalled run can no longer write
    with pytest.raises(Fenced):
        await ledger.wait(job, "run-a", "storage", "S3 down", 1)
    with pytest.raises(Fenced):
        await ledger.finish(job, "run-a", JobState.SUCCEEDED)
    assert (await ledger.start(job, "run-b", 20_000)).outcome == "ok"


async def test_unknown_outcome_counts_as_spend_and_a_replay_resolves_it(r: Redis) -> None:
    ledger, job = await _enqueued(r)
    await ledger.start(job, "run", 20_000)
    first = await ledger.call_begin(job, "run", "slot-1", PRICE)
    assert first.idem == f"{job}:1"
    await ledger.call_unknown(job, "slot-1")
    rec = await ledger.get(job)
    assert rec is not None and rec.possible_usd == 0.06 and rec.unknown_calls == 1
    assert int(await r.get(Keys.spend_total) or 0) == PRICE  # budgets see it as spent
    again = await ledger.call_begin(job, "run", "slot-2", PRICE)
    assert again.idem == first.idem and again.n == 2  # asked again under the same key
    paid = PaidResult(outputs=[PaidOutput(url="https://x/1")], cost_micros=PRICE)
    assert await ledger.call_answered(job, "slot-2", paid, replayed=True) == "saved"
    rec = await ledger.get(job)
    assert rec is not None and rec.cost_usd == 0.06 and rec.possible_usd == 0
    assert int(await r.get(Keys.spend_total) or 0) == PRICE


async def test_a_replay_settles_every_unknown_call_under_its_key(r: Redis) -> None:
    ledger, job = await _enqueued(r)
    for n in (1, 2):  # two runs die mid-call, both asking under the same idempotency key
        await _dies_mid_call(ledger, job, f"run{n}", f"up/slot-{n}")
    rec = await ledger.get(job)
    assert rec is not None and rec.possible_usd == 0.12  # each may have been billed
    await ledger.start(job, "run3", 20_000)
    again = await ledger.call_begin(job, "run3", "up/slot-3", PRICE)
    assert again.idem == f"{job}:1"
    paid = PaidResult(outputs=[PaidOutput(url="https://x/1")], cost_micros=PRICE)
    await ledger.call_answered(job, "up/slot-3", paid, replayed=True)
    rec = await ledger.get(job)
    assert rec is not None and rec.cost_usd == 0.06 and rec.possible_usd == 0  # one billed call
    assert int(await r.get(Keys.spend_total) or 0) == PRICE


async def test_a_replay_under_another_key_leaves_the_first_keys_call_counted(r: Redis) -> None:
    ledger, job = await _enqueued(r)
    await _dies_mid_call(ledger, job, "run1", "key-a/slot-1")
    await ledger.start(job, "run2", 20_000)
    other = await ledger.call_begin(job, "run2", "key-b/slot-2", PRICE)  # key-a was paused
    assert other.idem == f"{job}:2"
    paid = PaidResult(outputs=[PaidOutput(url="https://x/1")], cost_micros=PRICE)
    await ledger.call_answered(job, "key-b/slot-2", paid, replayed=True)
    rec = await ledger.get(job)
    assert rec is not None and rec.cost_usd == 0.06 and rec.possible_usd == 0.06


async def test_without_a_replay_both_calls_stay_counted(r: Redis) -> None:
    ledger, job = await _enqueued(r)
    await ledger.start(job, "run", 20_000)
    await ledger.call_begin(job, "run", "slot-1", PRICE)
    await ledger.call_unknown(job, "slot-1")
    await ledger.call_begin(job, "run", "slot-2", PRICE)
    paid = PaidResult(outputs=[PaidOutput(url="https://x/1")], cost_micros=PRICE)
    await ledger.call_answered(job, "slot-2", paid)
    rec = await ledger.get(job)
    assert rec is not None and rec.spend_usd == 0.12  # never below what the upstream billed


async def test_a_dead_runs_call_is_possibly_billed_and_its_paid_result_kept(r: Redis) -> None:
    ledger, job = await _enqueued(r)
    await _dies_mid_call(ledger, job, "run-a", "slot-1")
    j = await ledger.journal(job)
    assert j is not None and j.state == "unknown" and j.possible == PRICE
    # a paid answer reaching the stalled run is still saved (money first, not fenced)
    paid = PaidResult(outputs=[PaidOutput(url="https://x/1")], cost_micros=PRICE)
    assert await ledger.call_answered(job, "slot-1", paid) == "saved"
    st = await ledger.start(job, "run-b", 20_000)
    assert st.paid is not None and st.paid.outputs[0].url == "https://x/1"
    assert await r.ttl(Keys.paid(job)) == -1  # never expires while the job is not final
    await ledger.finish(job, "run-b", JobState.SUCCEEDED)
    assert not await r.exists(Keys.paid(job))


async def test_attempts_back_off_then_fail_and_keep_the_paid_result(r: Redis) -> None:
    ledger, job = await _enqueued(r)
    for n in (1, 2):
        await ledger.start(job, f"run{n}", 20_000)
        failed, attempts, delay = await ledger.attempt_failed(
            job,
            f"run{n}",
            "TransientError",
            "503",
            max_attempts=3,
            backoff_base_s=2,
            backoff_max_s=300,
        )
        assert not failed and attempts == n and 1 <= delay <= 2 * 2**n
        assert await _h(r, job, "state") == "waiting"
    await ledger.start(job, "run3", 20_000)
    await r.set(Keys.paid(job), PaidResult().model_dump_json())
    failed, attempts, _ = await ledger.attempt_failed(
        job, "run3", "TransientError", "503", max_attempts=3, backoff_base_s=2, backoff_max_s=300
    )
    assert failed and attempts == 3
    rec = await ledger.get(job)
    assert rec is not None and rec.state == "failed" and "gave up after 3" in (rec.error or "")
    assert await r.exists(Keys.paid(job))  # kept for `upscale retry`


async def test_heal_requeues_a_claimed_job_arq_dropped(r: Redis) -> None:
    ledger, job = await _enqueued(r)
    assert await _claim(r, 10) == [job]
    # arq gives up on it before our function runs (its own max tries): payload and entry go
    await r.delete(Keys.arq_job(job), Keys.arq_in_progress(job))
    await r.zrem(QUEUES["live"], job)
    healed = await ledger.heal(stale_ms=0, in_progress_ttl_ms=610_000, grace_ms=30_000)
    assert healed == [job]
    assert await r.zscore(QUEUES["live"], job) is not None
    payload = await r.get(Keys.arq_job(job))
    assert payload and b'"f":"upscale"' in payload
    assert await ledger.spec(job) == _spec()  # the run reads its request from the record
    # a stale arq in-progress key (older than the grace, no run) is cleared
    assert await _claim(r, 10) == [job]
    healed = await ledger.heal(stale_ms=0, in_progress_ttl_ms=610_000, grace_ms=30_000)
    assert healed == [job] and not await r.exists(Keys.arq_in_progress(job))


async def test_heal_walks_claimed_jobs_not_the_backlog(r: Redis) -> None:
    ledger = Ledger(r)
    await ledger.enqueue([_spec(n) for n in range(50)])
    assert await r.zcard(Keys.active) == 0  # queued jobs are indexed by their queue
    claimed = await _claim(r, 10)
    assert await r.zcard(Keys.active) == len(claimed) == 10
    await r.delete(*(Keys.arq_in_progress(j) for j in claimed))  # arq put them back
    healed = await ledger.heal(stale_ms=0, in_progress_ttl_ms=610_000, grace_ms=30_000)
    assert healed == [] and await r.zcard(Keys.active) == 0


async def test_heal_returns_the_reservation_of_a_dead_holder_whatever_fills_the_cap(
    r: Redis,
) -> None:
    _, job = await _enqueued(r)
    slot = "default/dead"
    await r.zadd(Keys.up("default").inflight, {slot: 1})  # its lease ran out long ago
    await r.hset(Keys.budget_reserved, slot, f"{PRICE}|||{job}")  # type: ignore[misc]  # redis-py's async stubs
    await r.incrby(Keys.budget_reserved_total, PRICE)
    returned = await Slots(r, lease_s=60).heal()
    assert returned == 1 and int(await r.get(Keys.budget_reserved_total) or 0) == 0
    assert await r.zscore(Keys.up("default").inflight, slot) is None


async def test_heal_returns_a_reservation_no_call_holds(r: Redis) -> None:
    _, job = await _enqueued(r)
    value = f"{PRICE}|{Keys.budget_reserved_day('2026-11-25')}||{job}"
    await r.hset(Keys.budget_reserved, "slot-x", value)  # type: ignore[misc]  # redis-py's async stubs
    await r.incrby(Keys.budget_reserved_total, PRICE)
    await r.incrby(Keys.budget_reserved_day("2026-11-25"), PRICE)
    returned = await Slots(r, lease_s=60).heal()
    assert returned == 1
    assert int(await r.get(Keys.budget_reserved_total) or 0) == 0
    assert int(await r.get(Keys.budget_reserved_day("2026-11-25")) or 0) == 0


async def test_a_retried_script_counts_once(r: Redis) -> None:
    # Redis went away after running a script but before its reply: the client runs it again
    ledger, job = await _enqueued(r)
    await ledger.start(job, "run", 20_000)
    first = await ledger.call_begin(job, "run", "slot-1", PRICE)
    again = await ledger.call_begin(job, "run", "slot-1", PRICE)
    assert again.idem == first.idem and again.n == first.n
    paid = PaidResult(outputs=[PaidOutput(url="https://x/1")], cost_micros=PRICE)
    await ledger.call_answered(job, "slot-1", paid)
    await ledger.call_answered(job, "slot-1", paid)
    rec = await ledger.get(job)
    assert rec is not None and rec.spend_usd == 0.06 and rec.billed_calls == 1 and rec.calls == 1


async def test_a_replayed_async_job_is_one_billed_call(r: Redis) -> None:
    ledger, job = await _enqueued(r)
    await ledger.start(job, "run", 20_000)
    await ledger.call_begin(job, "run", "slot-1", PRICE)
    await ledger.call_unknown(job, "slot-1")  # the 202 never reached us
    await ledger.call_begin(job, "run", "slot-2", PRICE)
    await ledger.call_answered(job, "slot-2", PaidResult(pending_id="job_1"), replayed=True)
    done = PaidResult(outputs=[PaidOutput(url="https://x/1")], cost_micros=PRICE)
    await ledger.call_answered(job, "slot-2", done)
    rec = await ledger.get(job)
    assert rec is not None and rec.spend_usd == 0.06


async def _claim(r: Redis, n: int) -> list[str]:
    queue = QUEUES["live"]
    reply = await register(r, "claim")(
        keys=[queue, first_of(queue)], args=[PREFIX, ARQ_IN_PROGRESS_PREFIX, 60_000, n, 1000]
    )
    return [v.decode() for v in reply[::2]]


async def test_work_holding_money_is_claimed_before_an_older_backlog(r: Redis) -> None:
    ledger = Ledger(r)
    backlog = [res.job_id for res in await ledger.enqueue([_spec(n) for n in range(1, 4)])]
    (res,) = await ledger.enqueue([_spec(9)])
    paid = res.job_id
    await ledger.start(paid, "run", 20_000)
    await ledger.call_begin(paid, "run", "slot-1", PRICE)
    result = PaidResult(outputs=[PaidOutput(url="https://x/1")], cost_micros=PRICE)
    await ledger.call_answered(paid, "slot-1", result)
    await ledger.wait(paid, "run", "storage", "S3 down", 0)  # paid, not stored: handed back
    # queued after the backlog, but claimed first: its result link would not outlive the backlog
    assert await _claim(r, 1) == [paid]
    assert sorted(await _claim(r, 5)) == sorted(backlog)  # then the rest of the queue, once
    assert await _claim(r, 5) == []


async def test_money_first_never_runs_a_job_before_its_due_time(r: Redis) -> None:
    _, job = await _enqueued(r)
    queue = QUEUES["live"]
    await r.zadd(first_of(queue), {job: 0})  # it held money once...
    later = int(await r.zscore(queue, job) or 0) + 60_000
    await r.zadd(queue, {job: later})  # ...and was put back for a minute since
    assert await _claim(r, 5) == []
    assert await r.zscore(first_of(queue), job) == later  # first again when due


async def test_a_stranded_job_with_a_call_on_its_way_goes_first(r: Redis) -> None:
    ledger, job = await _enqueued(r)
    await ledger.start(job, "run", 20_000)
    await ledger.call_begin(job, "run", "up/slot-1", PRICE)  # sent: it may be billed
    await r.zrem(Keys.runs, job)  # the run and its queue entry are gone: nothing would run it
    await r.zrem(QUEUES["live"], job)
    healed = await ledger.heal(stale_ms=0, in_progress_ttl_ms=610_000, grace_ms=30_000)
    assert healed == [job]
    assert await r.zscore(first_of(QUEUES["live"]), job) is not None
