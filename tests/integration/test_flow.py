"""Flow control across several real worker processes sharing one Redis."""

from __future__ import annotations

import asyncio
import itertools
import signal

import pytest

from infra.stack import LocalStack
from producers.api import Producer
from tests.integration.conftest import FAST, Buckets, Sim, WorkerProcs, put, wait_state
from tests.support import png
from worker.keys import Keys

pytestmark = pytest.mark.slow


async def _jobs(stack: LocalStack, producer: Producer, buckets: Buckets, n: int) -> list[str]:
    data = png(24, 24)
    ids = []
    for i in range(n):
        put(stack, buckets.src, f"f{i}.png", data)
        ids.append((await producer.enqueue(f"s3://{buckets.src}/f{i}.png", batch="flow")).job_id)
    return ids


async def _all(producer: Producer, ids: list[str], *states: str, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        await asyncio.gather(*(wait_state(producer, j, *states, timeout=timeout) for j in ids))


async def test_global_inflight_cap_across_processes(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    sim.configure(latency_ms=[150, 300])
    ids = await _jobs(stack, producer, buckets, 18)
    workers.start(3, max_inflight=3, max_jobs=8, **FAST)
    await _all(producer, ids, "succeeded")
    stats = sim.stats()
    assert stats["max_inflight"] <= 3
    assert stats["max_inflight"] >= 2  # and the cap is actually used
    assert stats["billed_calls"] == 18


async def test_shared_rate_limit_means_no_429(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    # 60 RPM with a 2 s burst window, as the user configured it: at most 4 calls per 2 s, for the
    # fleet as a whole.
    sim.configure(api_keys={"sim-key": 60}, burst_window_s=2.0)
    ids = await _jobs(stack, producer, buckets, 12)
    workers.start(
        3,
        rate_rpm=60,
        rate_burst_factor=2,
        rate_burst_window_s=2.0,
        rate_window_margin_s=0.2,
        max_inflight=10,
        **FAST,
    )
    await _all(producer, ids, "succeeded")
    stats = sim.stats()
    assert stats["by_status"].get("429", 0) == 0
    assert stats["billed_calls"] == 12


async def test_402_pauses_every_process_and_canary_resumes(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    sim.configure(latency_ms=[50, 100])
    sim.wallet(set=0.18)  # three images
    ids = await _jobs(stack, producer, buckets, 10)
    workers.start(3, max_inflight=4, canary_interval_s=1.0, **FAST)
    while (await producer.flow.pause_info()) is None:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # let in-flight calls land
    stats = sim.stats()
    # once the first 402 was answered, nothing started except canaries, one per interval
    first_402 = min(c["t_end"] for c in stats["log"] if c["status"] == 402)
    after = [c for c in stats["log"] if c["t"] > first_402 and c["path"].startswith("/v1/")]
    assert len(after) <= 1
    states = {(await producer.status(j)).state for j in ids}  # type: ignore[union-attr]  # the job exists
    assert "failed" not in states
    for j in ids:
        rec = await producer.status(j)
        assert rec is not None and rec.attempts == 0
    sim.wallet(add=10)  # top up; the canary notices and lifts the pause, no manual resume
    await _all(producer, ids, "succeeded")
    assert await producer.flow.pause_info() is None
    assert sim.stats()["billed_calls"] == 10


async def test_budget_cap_never_exceeded_under_concurrency(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    sim.configure(latency_ms=[100, 200])
    ids = await _jobs(stack, producer, buckets, 12)
    workers.start(3, budget_total_usd=0.30, max_inflight=8, **FAST)
    # five fit under $0.30; the other seven wait with a budget reason, none fails
    async with asyncio.timeout(60):
        while True:
            recs = [await producer.status(j) for j in ids]
            done = [r for r in recs if r and r.state == "succeeded"]
            waiting = [
                r for r in recs if r and r.state == "waiting" and r.wait_reason == "budget:total"
            ]
            if len(done) == 5 and len(waiting) == 7:
                break
            await asyncio.sleep(0.1)
    spend = await producer.ledger.spend()
    assert spend["total_usd"] == pytest.approx(0.30)
    assert sim.stats()["billed_calls"] == 5


async def test_cooldown_after_429_is_shared(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    sim.configure(fail_next=[429], fail_next_retry_after=2)
    ids = await _jobs(stack, producer, buckets, 6)
    workers.start(3, max_inflight=1, **FAST)
    await _all(producer, ids, "succeeded")
    log = [c for c in sim.stats()["log"] if c["path"].startswith("/v1/")]
    t429 = next(c["t_end"] for c in log if c["status"] == 429)
    later = [c["t"] for c in log if c["t"] > t429]
    assert later and min(later) - t429 >= 1.9  # no worker called during the cooldown
    for j in ids:
        rec = await producer.status(j)
        assert rec is not None and rec.attempts == 0


async def test_slot_of_a_killed_worker_is_recovered(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    sim.configure(latency_ms=[4000, 4000])
    ids = await _jobs(stack, producer, buckets, 1)
    (victim,) = workers.start(1, max_inflight=1, **FAST)
    async with asyncio.timeout(30):
        while sim.stats()["inflight"] == 0:
            await asyncio.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(5)
    assert await producer.redis.zcard(Keys.up("default").inflight) == 1  # the dead worker's slot
    sim.configure(latency_ms=[0, 0])
    more = await _jobs(stack, producer, buckets, 3)
    workers.start(1, max_inflight=1, **FAST)
    # default leases (20 s): the slot expires and the killed run is reclaimed, then all run
    await _all(producer, more[1:] + ids, "succeeded", timeout=60)
    assert await producer.redis.zcard(Keys.up("default").inflight) == 0


async def test_no_burst_wanted_means_evenly_spaced_calls(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    ids = await _jobs(stack, producer, buckets, 6)
    workers.start(2, rate_rpm=120, rate_burst_factor=1, max_inflight=10, **FAST)
    await _all(producer, ids, "succeeded")
    starts = sorted(c["t"] for c in sim.stats()["log"] if c["path"].startswith("/v1/"))
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # 120 RPM: one call per 0.5 s, never a clump (arrivals jitter by the loaded machine's
    # scheduling, tens of ms, around the even spacing the fleet keeps)
    assert len(starts) == 6 and min(gaps) >= 0.35


async def test_a_burst_rule_is_learned_from_a_429(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    # The upstream allows 60 RPM but at most 4 calls per 2 s; nobody told us about the second
    # rule. Its 429 (with room left in the minute) teaches it; later calls keep to it.
    sim.configure(api_keys={"sim-key": 60}, burst_window_s=2.0)
    ids = await _jobs(stack, producer, buckets, 16)
    workers.start(2, rate_rpm=60, rate_burst_window_s=2.0, max_inflight=10, **FAST)
    await _all(producer, ids, "succeeded", timeout=90)
    log = sorted(sim.stats()["log"], key=lambda c: c["t"])
    n429 = [c["t"] for c in log if c["status"] == 429]
    assert 1 <= len(n429) <= 10  # one round of calls in flight when the rule was hit
    later = [c for c in log if c["t"] > max(n429) + 0.5]
    assert later and all(c["status"] == 200 for c in later)
    assert sim.stats()["billed_calls"] == 16
