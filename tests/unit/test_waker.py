"""The waker: a freed slot wakes the head of the waiting line, not every waiting job."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from worker.flow import Admitted, Denied, FlowControl
from worker.flow.waker import Waker
from worker.keys import Keys
from worker.settings import Settings


async def _watched_wait(waker: Waker, job_id: str, timeout: float = 30) -> None:
    with waker.watching(job_id):
        await waker.wait(timeout, job_id)


async def _waiting(waker: Waker, *job_ids: str) -> dict[str, asyncio.Task[None]]:
    tasks = {j: asyncio.create_task(_watched_wait(waker, j)) for j in job_ids}
    await asyncio.sleep(0)  # let each register its wait
    return tasks


async def test_a_freed_slot_wakes_only_the_jobs_it_names() -> None:
    waker = Waker()
    tasks = await _waiting(waker, "a", "b", "c")
    waker.on_message("ids:a c")
    await asyncio.wait_for(asyncio.gather(tasks["a"], tasks["c"]), 1)
    assert not tasks["b"].done()
    tasks["b"].cancel()


async def test_any_other_message_wakes_everyone() -> None:
    waker = Waker()
    tasks = await _waiting(waker, "a", "b")
    waker.on_message("limit")
    await asyncio.wait_for(asyncio.gather(*tasks.values()), 1)


async def test_a_wait_ends_at_its_timeout_and_leaves_nothing_behind() -> None:
    waker = Waker()
    await _watched_wait(waker, "a", 0.01)
    waker.on_message("ids:a")  # nobody waits: nothing to wake
    assert waker._waiting == {}


async def test_a_wake_up_before_the_wait_is_kept_while_watched() -> None:
    """A slot freed while the job's denial was on its way back: the wait after it returns at
    once (and only that one: the next wait waits again)."""
    waker = Waker()
    with waker.watching("a"):
        waker.on_message("ids:a")
        await asyncio.wait_for(waker.wait(30, "a"), 1)
        again = asyncio.create_task(waker.wait(30, "a"))
        await asyncio.sleep(0.05)
        assert not again.done()
        waker.on_message("ids:a")
        await asyncio.wait_for(again, 1)
    assert waker._waiting == {}


async def test_a_freed_slot_names_the_head_of_the_line(r: Redis) -> None:
    flow = FlowControl(r, Settings(max_inflight=1, redis_url="redis://unused"))
    first = await flow.admit(job_id="a")
    assert isinstance(first, Admitted)
    for job in ("b", "c"):  # no room: they join the line, in arrival order
        denied = await flow.admit(job_id=job)
        assert isinstance(denied, Denied) and denied.reason == "concurrency"
    async with r.pubsub() as ps:
        await ps.subscribe(Keys.wake)
        await ps.get_message(timeout=1)  # the subscription's confirmation
        await flow.release(first.token)
        msg = await ps.get_message(ignore_subscribe_messages=True, timeout=30)
    assert msg is not None and msg["data"] == b"ids:b c"
