"""Wake, don't poll: jobs waiting for room sleep until a slot is freed for them.

The ledger's scripts publish on `flow:wake` whenever a call's slot is freed, naming the head of
the fleet's waiting line (`ids:<job> <job>`); one subscriber per process wakes those of its
waiting jobs (with the known wait as the timeout, e.g. when the rate window frees a slot at a
known time). Any other message (the limit became known, the channel was lost) wakes them all.
A job is watched from its first ask until it is admitted, so a wake-up that comes while its
denial is on the way back is kept for its next wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import structlog
from redis.asyncio import Redis

from worker.keys import Keys
from worker.ledger.reads import text
from worker.redis_conn import REDIS_DOWN

log = structlog.get_logger("worker.flow")
_IDS = "ids:"


class Waker:
    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Event] = {}  # job id -> its wake-up (one wait per job)

    @contextlib.contextmanager
    def watching(self, job_id: str) -> Iterator[None]:
        """From a job's first ask until it is admitted: a wake-up that comes while a denial is
        on its way back is kept (the wait after it returns at once), not lost."""
        self._waiting[job_id] = asyncio.Event()
        try:
            yield
        finally:
            self._waiting.pop(job_id, None)

    async def wait(self, timeout: float, job_id: str) -> None:
        """Until a freed slot names `job_id` (or everyone is woken), or `timeout` seconds; or
        at once if one did since the last wait. Only inside `watching(job_id)`."""
        event = self._waiting[job_id]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(0.001, timeout))
        event.clear()

    def wake(self, job_ids: list[str] | None = None) -> None:
        """Wake the named jobs waiting here (all of them when None)."""
        for job_id in list(self._waiting) if job_ids is None else job_ids:
            event = self._waiting.get(job_id)
            if event is not None:
                event.set()

    def on_message(self, data: str) -> None:
        self.wake(data[len(_IDS) :].split() if data.startswith(_IDS) else None)

    async def run(self, redis: Redis) -> None:
        """Subscribe for as long as the process lives (re-subscribing after an outage)."""
        while True:
            try:
                async with redis.pubsub() as ps:
                    await ps.subscribe(Keys.wake)
                    while True:
                        msg = await ps.get_message(ignore_subscribe_messages=True, timeout=5.0)
                        if msg is not None:
                            self.on_message(text(msg["data"]))
            except REDIS_DOWN as e:
                log.warning("wake-up channel lost; re-subscribing", error=type(e).__name__)
                self.wake()  # let waiters re-ask rather than sleep through the outage
                await asyncio.sleep(1.0)
