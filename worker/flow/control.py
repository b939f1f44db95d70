"""Fleet-wide flow control: pause, budget, concurrency, rate, cooldown and circuit, in Redis.

A worker asks `admit()` before every upstream call and reports the outcome afterwards. All
decisions happen in Lua (see `scripts.py`), so N processes on M machines act as one client.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis

from worker.contract import Keys, usd_to_micros
from worker.flow import scripts
from worker.settings import Settings

PauseReason = Literal["credits", "auth", "forbidden", "manual"]


@dataclass(frozen=True)
class Admitted:
    token: str
    kind: str  # normal | canary | probe


@dataclass(frozen=True)
class Denied:
    # paused:<why> | cooldown | circuit_open | circuit_half_open | budget:<cap> | lane |
    # concurrency | rate
    reason: str
    wait_s: float


@dataclass(frozen=True)
class PauseInfo:
    reason: str
    detail: str
    since_ms: int


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


class FlowControl:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._admit = redis.register_script(scripts.ADMIT)
        self._release = redis.register_script(scripts.RELEASE)
        self._renew = redis.register_script(scripts.RENEW)
        self._report = redis.register_script(scripts.REPORT)

    # -- admission ----------------------------------------------------------------------
    def _budget_keys(self, batch: str | None) -> tuple[list[str], list[str]]:
        day = _today()
        b = batch or ""
        spent = [Keys.spend_total, Keys.spend_day(day), Keys.spend_batch(b)]
        reserved = [
            "uq:budget:reserved:total",
            f"uq:budget:reserved:day:{day}",
            f"uq:budget:reserved:batch:{b}",
        ]
        return spent, reserved

    async def admit(
        self,
        *,
        batch: str | None = None,
        images: int = 1,
        lane: str = "live",
        job_id: str = "",
    ) -> Admitted | Denied:
        s = self.settings
        token = uuid.uuid4().hex
        spent, reserved = self._budget_keys(batch)
        est = usd_to_micros(s.price_usd) * images

        def cap(v: float | None, applies: bool = True) -> int:
            return usd_to_micros(v) if v is not None and applies else -1

        reply = await self._admit(
            keys=[
                Keys.pause,
                Keys.cooldown,
                Keys.circuit,
                Keys.inflight,
                Keys.rate,
                Keys.canary,
                Keys.budget_reserved,
                *spent,
                *reserved,
                Keys.batch(batch or ""),
                Keys.live_waiting,
                Keys.rate_bulk,
            ],
            args=[
                token,
                s.max_inflight,
                s.lease_s * 1000,
                s.rate_rpm,
                int((60 + s.rate_window_margin_s) * 1000),
                max(1, math.floor(s.rate_rpm * s.rate_burst_factor * s.rate_burst_window_s / 60)),
                int((s.rate_burst_window_s + s.rate_window_margin_s) * 1000),
                int(s.canary_interval_s * 1000),
                est,
                cap(s.budget_total_usd),
                cap(s.budget_daily_usd),
                cap(s.budget_batch_usd, bool(batch)),  # plus the batch's own cap, if set
                int(s.pause_poll_s * 1000),
                10_000,
                lane,
                job_id or token,
                math.ceil(s.bulk_floor * s.rate_rpm),
                # no burst wanted: space calls evenly, so capacity frees every 60/RPM s
                int(60_000 / s.rate_rpm) if s.rate_burst_factor <= 1 else 0,
            ],
        )
        if int(reply[0]) == 1:
            return Admitted(token=token, kind=_s(reply[1]))
        return Denied(reason=_s(reply[1]), wait_s=int(reply[2]) / 1000)

    async def release(self, token: str, batch: str | None = None) -> None:
        _, reserved = self._budget_keys(batch)
        await self._release(keys=[Keys.inflight, Keys.budget_reserved, *reserved], args=[token])

    @asynccontextmanager
    async def lease(self, token: str, batch: str | None = None) -> AsyncIterator[None]:
        """Hold an admitted slot for the duration of a call, renewing the lease while it runs."""

        async def renew() -> None:
            interval = max(1.0, self.settings.lease_s / 3)
            while True:
                await asyncio.sleep(interval)
                await self._renew(keys=[Keys.inflight], args=[token, self.settings.lease_s * 1000])

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            task.cancel()
            # Release even if we are being cancelled (SIGTERM): the slot must come back.
            await asyncio.shield(self.release(token, batch))

    # -- outcomes -----------------------------------------------------------------------
    async def _report_outcome(
        self,
        outcome: str,
        token: str = "",
        reason: str = "",
        retry_after_ms: int = 0,
        detail: str = "",
    ) -> str:
        s = self.settings
        reply = await self._report(
            keys=[Keys.pause, Keys.cooldown, Keys.circuit, Keys.canary],
            args=[
                outcome,
                token,
                reason,
                retry_after_ms,
                s.circuit_threshold,
                int(s.circuit_open_s * 1000),
                10_000,
                detail,
                int(s.canary_interval_s * 1000),
            ],
        )
        return _s(reply)

    async def report_ok(self, token: str) -> str:
        return await self._report_outcome("ok", token)

    async def report_paused(self, reason: PauseReason, detail: str = "") -> None:
        await self._report_outcome("paused", reason=reason, detail=detail)

    async def report_rate_limited(self, retry_after_s: float) -> None:
        await self._report_outcome("rate_limited", retry_after_ms=int(retry_after_s * 1000))

    async def report_server_error(self) -> str:
        return await self._report_outcome("server_error")

    # -- operator controls --------------------------------------------------------------
    async def pause(self, reason: PauseReason = "manual", detail: str = "") -> None:
        await self.report_paused(reason, detail)

    async def resume(self) -> bool:
        """Lift a pause. Returns whether one was in force."""
        removed = await self.redis.delete(Keys.pause, Keys.canary)
        return bool(removed)

    async def pause_info(self) -> PauseInfo | None:
        h = await self.redis.hgetall(Keys.pause)  # type: ignore[misc]  # redis-py's async stubs
        if not h:
            return None
        d = {_s(k): _s(v) for k, v in h.items()}
        return PauseInfo(
            reason=d.get("reason", "?"), detail=d.get("detail", ""), since_ms=int(d.get("since", 0))
        )

    async def is_paused(self) -> bool:
        return bool(await self.redis.exists(Keys.pause))

    async def gate(self) -> str:
        """`open` (not paused), `canary` (paused, a canary call is due) or `closed`."""
        async with self.redis.pipeline(transaction=False) as p:
            p.hget(Keys.pause, "reason")
            p.exists(Keys.canary)
            reason, canary_taken = await p.execute()
        if reason is None:
            return "open"
        if _s(reason) != "manual" and self.settings.canary_interval_s > 0 and not canary_taken:
            return "canary"
        return "closed"

    async def snapshot(self) -> dict[str, Any]:
        """Everything an operator wants to see, in one round trip."""
        async with self.redis.pipeline(transaction=False) as p:
            p.hgetall(Keys.pause)
            p.pttl(Keys.cooldown)
            p.hgetall(Keys.circuit)
            p.zcard(Keys.inflight)
            p.zcount(Keys.rate, f"({int(time.time() * 1000) - 60_000}", "+inf")
            pause, cooldown_ttl, circuit, inflight, last_minute = await p.execute()
        return {
            "pause": {_s(k): _s(v) for k, v in pause.items()} or None,
            "cooldown_s": max(0, cooldown_ttl) / 1000 if cooldown_ttl and cooldown_ttl > 0 else 0,
            "circuit": {_s(k): _s(v) for k, v in circuit.items()}.get("state", "closed"),
            "inflight": int(inflight),
            "calls_last_minute": int(last_minute),
        }
