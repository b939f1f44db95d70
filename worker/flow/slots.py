"""The in-flight slot's whole life, in one module (every write to an in-flight set is in
`worker/lua/_slot.lua`).

A slot, `<upstream name>/<hex>`, is one call's place under its upstream's in-flight cap; its
budget reservation is named by the same token (`worker/lua/_money.lua`).
- taken: by admission (`admit.lua`: `take_slot`), with its rate-window entries and its
  reservation, in the one atomic decision; `new_token()` makes its hex;
- held: `Slots.hold` renews its lease while the call runs (`renew.lua`); a dead worker's
  slot expires and admission prunes it (`prune_slots`);
- freed: when the call's outcome is recorded, by the ledger's call journal (`call_answered`,
  `call_refused`, `call_unknown`, `reclaim`: `free_slot`, which wakes the waiting line's head);
  `Slots.release` gives back one that made no call (`release.lua`);
- healed: `Slots.heal` (`heal_slots.lua`, run by the fleet's one healer) returns the
  reservation, and frees the slot, of a holder that died before its call was journaled.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import structlog
from redis.asyncio import Redis

from worker.keys import PREFIX, Keys, upstream_of
from worker.lua import register
from worker.redis_conn import REDIS_DOWN

log = structlog.get_logger("worker.flow")


def new_token() -> str:
    """A slot's own part (admission prefixes it with the upstream's name)."""
    return uuid.uuid4().hex


def _inflight_by_name(slot: str) -> str:
    return Keys.up(upstream_of(slot)).inflight


class Slots:
    """Give back, hold and heal in-flight slots. `inflight_of(slot)`: the in-flight set a slot
    is in (flow control's: its pool upstream's)."""

    def __init__(
        self,
        redis: Redis,
        *,
        lease_s: float,
        inflight_of: Callable[[str], str] = _inflight_by_name,
    ) -> None:
        self.redis = redis
        self.lease_s = lease_s
        self.inflight_of = inflight_of
        self._release = register(redis, "release")
        self._renew = register(redis, "renew")
        self._heal = register(redis, "heal_slots")

    async def release(self, slot: str) -> None:
        """Give back an admitted slot that made no call (and its budget reservation)."""
        await self._release(keys=[self.inflight_of(slot)], args=[PREFIX, slot])

    @asynccontextmanager
    async def hold(self, slot: str) -> AsyncIterator[None]:
        """Keep an admitted slot's lease alive while its call runs. The ledger's call journal
        frees the slot when the outcome is recorded; a dead worker's slot expires."""
        inflight = self.inflight_of(slot)

        async def renew() -> None:
            interval = max(1.0, self.lease_s / 4)
            while True:
                await asyncio.sleep(interval)
                try:
                    await self._renew(
                        keys=[inflight], args=[PREFIX, slot, int(self.lease_s * 1000)]
                    )
                except REDIS_DOWN as e:  # keep trying: one failed renewal is not a lost slot
                    log.warning("slot renewal failed", error=type(e).__name__)

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def heal(self) -> int:
        """Return reservations (and free slots) no call holds: their holder died between
        admission and journaling its call. Returns how many."""
        return int(await self._heal(keys=[Keys.budget_reserved], args=[PREFIX]))
