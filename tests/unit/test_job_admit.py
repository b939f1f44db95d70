"""Admission (`worker.job.admit`) against the real flow control on a redis-server: a slot at
once, a short wait in the job (woken by a freed slot), a long one handed back."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from redis.asyncio import Redis

from tests.unit.job_fakes import fakes
from worker.job.admit import Slot, admit, release
from worker.keys import Keys
from worker.outcomes import JobWaits


async def _inflight(r: Redis) -> list[bytes]:
    return list(await r.zrange(Keys.up("default").inflight, 0, -1))


async def test_a_free_key_admits_at_once(r: Redis) -> None:
    async with fakes(r) as f:
        job = await f.job()
        slot = await admit(job)
        assert isinstance(slot, Slot) and slot.upstream == "default"
        assert slot.token.startswith("default/")
        assert await _inflight(r) == [slot.token.encode()]
        await release(job, slot)
        assert await _inflight(r) == []


async def test_a_paused_fleet_hands_the_job_back(r: Redis) -> None:
    async with fakes(r) as f:
        job = await f.job()
        await f.rt.flow.pause("manual", "test")
        with pytest.raises(JobWaits) as e:
            await admit(job)
        assert e.value.reason == "paused:manual"
        assert await _inflight(r) == []


async def test_a_full_key_waits_in_the_job_until_a_slot_is_freed(r: Redis) -> None:
    async with fakes(r, max_inflight=1) as f:
        waker = asyncio.create_task(f.rt.waker.run(r))  # `flow:wake`: a slot was freed
        try:
            first, second = await f.job(), await f.job_for("dog.png")
            held = await admit(first)
            waiting = asyncio.create_task(admit(second))
            while not await r.zscore(Keys.waiting_line, second.id):  # it waits in line
                await asyncio.sleep(0.01)
            assert not waiting.done()
            await release(first, held)
            slot = await asyncio.wait_for(waiting, 10)
            assert slot.wait_ms is not None and slot.token != held.token
        finally:
            waker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waker
