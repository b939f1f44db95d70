"""Wake, don't poll: jobs waiting for room sleep until a slot is freed anywhere in the fleet.

The ledger's scripts publish on `flow:wake` whenever a call's slot is freed; one subscriber per
process turns that into an asyncio event its waiting jobs await (with the known wait as the
timeout, e.g. when the rate window frees a slot at a known time).
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from redis.asyncio import Redis

from worker.keys import Keys
from worker.redis_conn import REDIS_DOWN

log = structlog.get_logger("worker.flow")


class Waker:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        """Until the next freed slot, or `timeout` seconds."""
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(0.001, timeout))

    def wake(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def run(self, redis: Redis) -> None:
        """Subscribe for as long as the process lives (re-subscribing after an outage)."""
        while True:
            try:
                async with redis.pubsub() as ps:
                    await ps.subscribe(Keys.wake)
                    while True:
                        msg = await ps.get_message(ignore_subscribe_messages=True, timeout=5.0)
                        if msg is not None:
                            self.wake()
            except REDIS_DOWN as e:
                log.warning("wake-up channel lost; re-subscribing", error=type(e).__name__)
                self.wake()  # let waiters re-ask rather than sleep through the outage
                await asyncio.sleep(1.0)
