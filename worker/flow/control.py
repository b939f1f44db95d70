"""Fleet-wide flow control: pause, budget, concurrency, rate, cooldown and circuit, in Redis.

A worker asks `admit()` before every upstream call and reports the outcome afterwards. All
decisions happen in Lua (`worker/lua/admit.lua`, `gate.lua`, `report.lua`), so N processes on M
machines act as one client. The call's outcome (and with it the slot and the budget
reservation) is settled by the ledger's call journal (`call_*.lua`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from redis.asyncio import Redis

from worker.contract import usd_to_micros
from worker.keys import PREFIX, Keys
from worker.lua import register
from worker.redis_conn import REDIS_DOWN
from worker.settings import Settings
from worker.upstream.base import RateInfo

log = structlog.get_logger("worker.flow")

PauseReason = Literal["credits", "auth", "forbidden", "manual"]
EASE_MS = 10_000  # after an unexplained 429: half the rate for this long
GateState = Literal["open", "canary", "closed"]


@dataclass(frozen=True)
class Gate:
    """Whether any call can be admitted now (`closed` carries why and for how long)."""

    state: GateState
    reason: str = ""
    wait_s: float = 0.0


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


def cap(usd: float | None, applies: bool = True) -> int:
    """A budget cap in micro-USD for the Lua scripts (-1 = none)."""
    return usd_to_micros(usd) if usd is not None and applies else -1


def _today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


class FlowControl:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._admit = register(redis, "admit")
        self._release = register(redis, "release")
        self._renew = register(redis, "renew")
        self._report = register(redis, "report")
        self._gate = register(redis, "gate")
        self._observe = register(redis, "observe")
        self._window_ms = int((60 + settings.rate_window_margin_s) * 1000)
        self._limit_logged = False

    # -- admission ----------------------------------------------------------------------
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
    ) -> Admitted | Denied:
        s = self.settings
        token = uuid.uuid4().hex
        spent, reserved = self._budget_keys(batch)
        est = usd_to_micros(s.price_usd) * images

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
                Keys.upstream,
                Keys.waiting_line,
                Keys.waiting_seen,
            ],
            args=[
                PREFIX,
                token,
                s.inflight_cap,
                s.lease_s * 1000,
                s.rpm_ceiling,
                self._window_ms,
                s.rate_burst_factor or 0,
                int(s.rate_burst_window_s * 1000),
                int(s.canary_interval_s * 1000),
                est,
                cap(s.budget_total_usd),
                cap(s.budget_daily_usd),
                cap(s.budget_batch_usd, bool(batch)),  # plus the batch's own cap, if set
                int(s.pause_poll_s * 1000),
                EASE_MS,
                lane,
                job_id or token,
                s.bulk_floor,
                int(s.rate_window_margin_s * 1000),
            ],
        )
        if int(reply[0]) == 1:
            return Admitted(token=token, kind=_s(reply[1]))
        return Denied(reason=_s(reply[1]), wait_s=int(reply[2]) / 1000)

    async def release(self, token: str) -> None:
        """Give back an admitted slot that made no call (and its budget reservation)."""
        await self._release(keys=[Keys.inflight], args=[PREFIX, token])

    @asynccontextmanager
    async def hold(self, token: str) -> AsyncIterator[None]:
        """Keep an admitted slot's lease alive while its call runs. The ledger's call journal
        releases the slot when the outcome is recorded; a dead worker's slot expires."""

        async def renew() -> None:
            interval = max(1.0, self.settings.lease_s / 4)
            while True:
                await asyncio.sleep(interval)
                try:
                    await self._renew(
                        keys=[Keys.inflight], args=[PREFIX, token, self.settings.lease_s * 1000]
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

    # -- outcomes -----------------------------------------------------------------------
    async def _report_outcome(
        self,
        outcome: str,
        token: str = "",
        reason: str = "",
        retry_after_ms: int = 0,
        detail: str = "",
        ease_ms: int = 0,
    ) -> str:
        s = self.settings
        reply = await self._report(
            keys=[Keys.pause, Keys.cooldown, Keys.circuit, Keys.canary],
            args=[
                PREFIX,
                outcome,
                token,
                reason,
                retry_after_ms,
                s.circuit_threshold,
                int(s.circuit_open_s * 1000),
                ease_ms,
                detail,
                int(s.canary_interval_s * 1000),
            ],
        )
        return _s(reply)

    async def report_paused(self, reason: PauseReason, detail: str = "") -> None:
        await self._report_outcome("paused", reason=reason, detail=detail)

    async def report_rate_limited(self, retry_after_s: float, *, ease: bool = True) -> None:
        """One cooldown for the fleet; then half the rate for a while, unless the 429 was
        explained (a burst rule just learned from it)."""
        await self._report_outcome(
            "rate_limited", retry_after_ms=int(retry_after_s * 1000), ease_ms=EASE_MS if ease else 0
        )

    async def observe(self, rate: RateInfo, status: int, *, ok_token: str = "") -> bool:
        """Keep the fleet's view of the upstream's limit current (`x-ratelimit-*` on every
        answer); with `ok_token`, also settle a successful call's flow state (close the
        circuit, lift a pause its canary proved over). Returns True when a 429 taught a
        burst cap."""
        s = self.settings
        if rate.limit and s.rpm_ceiling and rate.limit < s.rpm_ceiling and not self._limit_logged:
            log.warning(
                "the upstream reports a lower limit than UPSCALE_RATE_RPM; using it",
                upstream_rpm=rate.limit,
                configured_rpm=s.rpm_ceiling,
            )
            self._limit_logged = True
        reply = await self._observe(
            keys=[Keys.upstream, Keys.rate, Keys.rate_429, Keys.pause, Keys.circuit, Keys.canary],
            args=[
                PREFIX,
                rate.limit if rate.limit is not None else -1,
                rate.remaining if rate.remaining is not None else -1,
                int(rate.reset_s * 1000) if rate.reset_s is not None else -1,
                status,
                int((s.rate_burst_window_s + s.rate_window_margin_s) * 1000),
                int(s.burst_learn_s * 1000),
                self._window_ms,
                uuid.uuid4().hex,
                ok_token,
            ],
        )
        if _s(reply) == "resumed":
            log.info("canary call succeeded: the fleet resumes")
        learned = _s(reply) == "burst"
        if learned:
            log.info("429 with room left in the window: a burst rule, learned")
        return learned

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

    async def gate(self) -> Gate:
        """Can any call be admitted now? (pause, cooldown, open circuit, total/daily budget)"""
        s = self.settings
        day = _today()
        reply = await self._gate(
            keys=[
                Keys.pause,
                Keys.canary,
                Keys.cooldown,
                Keys.circuit,
                Keys.spend_total,
                Keys.spend_day(day),
                Keys.budget_reserved_total,
                Keys.budget_reserved_day(day),
            ],
            args=[
                PREFIX,
                int(s.canary_interval_s * 1000),
                usd_to_micros(s.price_usd),
                cap(s.budget_total_usd),
                cap(s.budget_daily_usd),
                int(s.pause_poll_s * 1000),
            ],
        )
        state: GateState = _s(reply[0])  # type: ignore[assignment]  # the script's values
        if state != "closed":
            return Gate(state)
        return Gate(state, reason=_s(reply[1]), wait_s=int(reply[2]) / 1000)

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
