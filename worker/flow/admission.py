"""Admission: one atomic decision (`admit.lua`) over every control and every key of the pool,
the slot's lease while its call runs, and the gate (can anything be admitted now?)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from worker.flow.base import FlowBase, log
from worker.flow.decisions import (
    Admitted,
    Denied,
    Gate,
    GateState,
    _today,
    cap,
)
from worker.keys import PREFIX, Keys, upstream_of
from worker.ledger.reads import text
from worker.redis_conn import REDIS_DOWN


class Admission(FlowBase):
    def _budget_keys(self, batch: str | None) -> tuple[list[str], list[str]]:
        day = _today()
        b = batch or ""
        spent = [Keys.spend_total, Keys.spend_day(day), Keys.spend_batch(b)]
        reserved = [
            Keys.budget_reserved_total,
            Keys.budget_reserved_day(day),
            Keys.budget_reserved_batch(b),
        ]
        return spent, reserved

    async def admit(
        self,
        *,
        batch: str | None = None,
        images: int = 1,
        lane: str = "live",
        job_id: str = "",
        prefer: str = "",
    ) -> Admitted | Denied:
        """One slot on the first key of the pool with room now (`prefer` first: the key an
        unknown call went to, so it is asked again where its idempotency key means something)."""
        s = self.settings.flow
        token = uuid.uuid4().hex
        spent, reserved = self._budget_keys(batch)
        order = sorted(self.pool, key=lambda m: m.name != prefer) if prefer else self.pool
        keys = [
            Keys.pause,
            Keys.budget_reserved,
            *spent,
            *reserved,
            Keys.batch(batch or ""),
            Keys.live_waiting,
            Keys.waiting_line,
            Keys.waiting_seen,
        ]
        args: list[str | int | float] = [
            PREFIX,
            token,
            s.lease_s * 1000,
            self._window_ms,
            int(s.rate_burst_window_s * 1000),
            int(s.canary_interval_s * 1000),
            cap(s.budget_total_usd),
            cap(s.budget_daily_usd),
            cap(s.budget_batch_usd, bool(batch)),  # plus the batch's own cap, if set
            int(s.pause_poll_s * 1000),
            lane,
            job_id or token,
            s.bulk_floor,
            int(s.rate_window_margin_s * 1000),
            len(order),
        ]
        for m in order:
            ms = m.flow
            keys += m.keys.admission()
            args += [
                m.name,
                ms.inflight_cap,
                ms.rpm_ceiling,
                ms.rate_burst_factor or 0,
                m.price_micros * images,
                m.budget_micros,
            ]
        reply = await self._admit(keys=keys, args=args)
        if int(reply[0]) == 1:
            name = text(reply[2])
            return Admitted(token=f"{name}/{token}", kind=text(reply[1]), upstream=name)  # type: ignore[arg-type]  # the script's values
        return Denied(reason=text(reply[1]), wait_s=int(reply[2]) / 1000)  # type: ignore[arg-type]  # the script's values

    async def release(self, token: str) -> None:
        """Give back an admitted slot that made no call (and its budget reservation)."""
        inflight = self.member(upstream_of(token)).keys.inflight
        await self._release(keys=[inflight], args=[PREFIX, token])

    @asynccontextmanager
    async def hold(self, token: str) -> AsyncIterator[None]:
        """Keep an admitted slot's lease alive while its call runs. The ledger's call journal
        releases the slot when the outcome is recorded; a dead worker's slot expires."""
        inflight = self.member(upstream_of(token)).keys.inflight

        async def renew() -> None:
            interval = max(1.0, self.settings.flow.lease_s / 4)
            while True:
                await asyncio.sleep(interval)
                try:
                    await self._renew(
                        keys=[inflight], args=[PREFIX, token, self.settings.flow.lease_s * 1000]
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

    async def gate(self) -> Gate:
        """Can any call be admitted now, on any key? (pause, cooldown, open circuit, budgets)"""
        s = self.settings.flow
        day = _today()
        keys = [
            Keys.pause,
            Keys.spend_total,
            Keys.spend_day(day),
            Keys.budget_reserved_total,
            Keys.budget_reserved_day(day),
        ]
        args: list[str | int] = [
            PREFIX,
            int(s.canary_interval_s * 1000),
            cap(s.budget_total_usd),
            cap(s.budget_daily_usd),
            int(s.pause_poll_s * 1000),
            len(self.pool),
        ]
        for m in self.pool:
            k = m.keys
            keys += [k.pause, k.canary, k.cooldown, k.circuit, k.spend, k.reserved]
            args += [m.price_micros, m.budget_micros]
        reply = await self._gate(keys=keys, args=args)
        state: GateState = text(reply[0])  # type: ignore[assignment]  # the script's values
        if state != "closed":
            return Gate(state)
        return Gate(state, reason=text(reply[1]), wait_s=int(reply[2]) / 1000)
