"""Admission against the upstream's own word (`observe.lua` then `admit.lua`, real Redis): an
answer's `remaining`/`reset` describe the window as of the call's arrival, not of the answer."""

from __future__ import annotations

from redis.asyncio import Redis

from worker.flow import Admitted, Denied, FlowControl
from worker.settings import Settings
from worker.upstream.base import RateInfo

WORD = RateInfo(limit=60, remaining=0, reset_s=1.0)  # "no calls left; the window resets in 1 s"


def _flow(r: Redis) -> FlowControl:
    return FlowControl(r, Settings(rate_rpm=60, rate_burst_factor=0, redis_url="redis://unused"))


async def _sent_ago(r: Redis, flow: FlowControl, slot: str, seconds: float) -> None:
    """Date the call's entry in our rate window back: it left `seconds` ago."""
    rate = flow.pool[0].keys.rate
    score = await r.zscore(rate, slot)
    assert score is not None
    await r.zadd(rate, {slot: score - seconds * 1000})


async def test_no_calls_left_holds_admission_until_the_reset(r: Redis) -> None:
    flow = _flow(r)
    first = await flow.admit(job_id="a")
    assert isinstance(first, Admitted)
    await flow.observe(first.upstream, WORD, 200, slot=first.token)  # answered at once
    second = await flow.admit(job_id="b")
    assert isinstance(second, Denied) and second.reason == "rate"
    assert 0.5 < second.wait_s <= 1.0


async def test_a_slow_answer_does_not_push_the_reset_out_by_its_latency(r: Redis) -> None:
    flow = _flow(r)
    first = await flow.admit(job_id="a")
    assert isinstance(first, Admitted)
    # the call took 3 s: the upstream's "resets in 1 s" was said 3 s ago, so it has reset
    await _sent_ago(r, flow, first.token, 3.0)
    await flow.observe(first.upstream, WORD, 200, slot=first.token)
    assert isinstance(await flow.admit(job_id="b"), Admitted)


async def test_without_the_call_the_reset_counts_from_the_answer(r: Redis) -> None:
    flow = _flow(r)
    await flow.observe(flow.pool[0].name, WORD, 500)  # an error answer: no slot to date it by
    denied = await flow.admit(job_id="b")
    assert isinstance(denied, Denied) and denied.reason == "rate"
