"""The waker: a freed slot wakes the head of the waiting line, not every waiting job."""

from __future__ import annotations

import asyncio

from worker.flow.waker import Waker


async def _waiting(waker: Waker, *job_ids: str) -> dict[str, asyncio.Task[None]]:
    tasks = {j: asyncio.create_task(waker.wait(30, j)) for j in job_ids}
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
    await waker.wait(0.01, "a")
    waker.on_message("ids:a")  # nobody waits: nothing to wake
    assert waker._waiting == {}
