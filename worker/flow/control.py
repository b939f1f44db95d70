"""Fleet-wide flow control: pause, budget, concurrency, rate, cooldown and circuit, in Redis.

A worker asks `admit()` before every upstream call and reports the outcome afterwards. All
decisions happen in Lua (`worker/lua/admit.lua`, `gate.lua`, `report.lua`, `observe.lua`), so N
processes on M machines act as one client. Every key of the pool (`worker.upstream.pool`) has
its own window, cooldown, circuit, pause and budget; admission takes the first key (in the
pool's order) that has room now. The call's outcome (and with it the slot and the budget
reservation) is settled by the ledger's call journal (`call_*.lua`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import structlog
from redis.asyncio import Redis

from worker.contract import usd_to_micros
from worker.flow.status import (
    FlowStatus,
    MemberFacts,
    PauseInfo,
    read_status,
)
from worker.keys import PREFIX, Keys, upstream_of
from worker.lua import register
from worker.redis_conn import REDIS_DOWN
from worker.settings import Settings
from worker.upstream.base import RateInfo
from worker.upstream.pool import Member, load_pool

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


AdmitKind = Literal["normal", "canary", "probe"]
# Why admission said no. `paused:<why>` and `budget:<cap>` carry the pause reason / the cap.
DenyReason = Literal[
    "cooldown",
    "circuit_open",
    "circuit_half_open",
    "lane",
    "concurrency",
    "rate",
    "queued",
    "paused:credits",
    "paused:auth",
    "paused:forbidden",
    "paused:manual",
    "budget:total",
    "budget:daily",
    "budget:batch",
    "budget:key",
]


# Denials that end at a known moment (the window frees a slot, a cooldown or an open circuit
# ends). A job waits a short one out; a longer one hands the job back to be picked up this
# much before that moment (and workers pick again this much before a cooldown ends), so the
# pick-up and its checks overlap the wait.
TIMED_DENIALS: frozenset[str] = frozenset({"rate", "cooldown", "circuit_open"})
PICKUP_LEAD_S = 1.0
# A pause seen in this process holds here until Redis has it (and a canary can lift it there).
LOCAL_PAUSE_S = 2.0


@dataclass(frozen=True)
class Admitted:
    token: str  # the slot: `<upstream key name>/<hex>`
    kind: AdmitKind
    upstream: str  # the pool member's name


@dataclass(frozen=True)
class Denied:
    reason: DenyReason
    wait_s: float


class UnknownUpstream(ValueError):
    """An operator named a key the pool does not have."""


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def cap(usd: float | None, applies: bool = True) -> int:
    """A budget cap in micro-USD for the Lua scripts (-1 = none)."""
    return usd_to_micros(usd) if usd is not None and applies else -1


def _today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


class FlowControl:
    def __init__(
        self, redis: Redis, settings: Settings, pool: Sequence[Member] | None = None
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.pool: list[Member] = list(pool) if pool is not None else load_pool(settings)
        self.members = {m.name: m for m in self.pool}
        self._admit = register(redis, "admit")
        self._release = register(redis, "release")
        self._renew = register(redis, "renew")
        self._report = register(redis, "report")
        self._gate = register(redis, "gate")
        self._observe = register(redis, "observe")
        self._window_ms = int((60 + settings.flow.rate_window_margin_s) * 1000)
        self._limit_logged: set[str] = set()
        self._paused_here: dict[str, tuple[str, float]] = {}  # key -> (reason, until monotonic)

    def member(self, name: str) -> Member:
        """The pool member `name` (a slot from before pools, or a removed key: the first)."""
        return self.members.get(name) or self.pool[0]

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
            name = _s(reply[2])
            return Admitted(token=f"{name}/{token}", kind=_s(reply[1]), upstream=name)  # type: ignore[arg-type]  # the script's values
        return Denied(reason=_s(reply[1]), wait_s=int(reply[2]) / 1000)  # type: ignore[arg-type]  # the script's values

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

    # -- outcomes (per key) -------------------------------------------------------------
    async def _report_outcome(
        self,
        upstream: str,
        outcome: str,
        reason: str = "",
        retry_after_ms: int = 0,
        detail: str = "",
        ease_ms: int = 0,
    ) -> str:
        s = self.settings.flow
        k = self.member(upstream).keys if upstream in self.members else Keys.up(upstream)
        reply = await self._report(
            keys=[k.pause, k.cooldown, k.circuit, k.canary],
            args=[
                PREFIX,
                outcome,
                "",
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

    def pause_seen(self, upstream: str, reason: str) -> None:
        """A 402/401/403 just reached this process: its other calls on that key stop at once,
        before the pause is in Redis (where every process's `call_begin` sees it)."""
        self._paused_here[upstream] = (reason, time.monotonic() + LOCAL_PAUSE_S)

    def paused_here(self, upstream: str) -> str | None:
        """The reason, if this process saw that key's pause moments ago."""
        seen = self._paused_here.get(upstream)
        if seen is None or time.monotonic() > seen[1]:
            return None
        return seen[0]

    async def report_paused(self, upstream: str, reason: PauseReason, detail: str = "") -> None:
        """A 402 / 401 / 403 pauses that key only; the fleet stops when no key is usable."""
        await self._report_outcome(upstream, "paused", reason=reason, detail=detail)
        log.warning("upstream key paused", upstream=upstream, reason=reason, detail=detail)

    async def report_rate_limited(
        self, upstream: str, retry_after_s: float, *, ease: bool = True
    ) -> None:
        """One cooldown for the key; then half its rate for a while, unless the 429 was
        explained (a burst rule just learned from it)."""
        await self._report_outcome(
            upstream,
            "rate_limited",
            retry_after_ms=int(retry_after_s * 1000),
            ease_ms=EASE_MS if ease else 0,
        )

    async def report_server_error(self, upstream: str) -> str:
        return await self._report_outcome(upstream, "server_error")

    async def observe(self, upstream: str, rate: RateInfo, status: int, *, slot: str = "") -> bool:
        """Keep the fleet's view of a key's limit current (`x-ratelimit-*` on every answer).
        With the call's `slot`: a success also settles the call's flow state (close the
        circuit, lift a pause its canary proved over); a 429 takes the refused call out of the
        rate windows. Returns True when a 429 taught a burst cap."""
        m = self.member(upstream)
        ms, k = m.flow, m.keys
        ceiling = ms.rpm_ceiling
        if rate.limit and ceiling and rate.limit < ceiling and m.name not in self._limit_logged:
            log.warning(
                "the upstream reports a lower limit than configured; using it",
                upstream=m.name,
                upstream_rpm=rate.limit,
                configured_rpm=ceiling,
            )
            self._limit_logged.add(m.name)
        reply = await self._observe(
            keys=[k.said, k.rate, k.rate_429, k.pause, k.circuit, k.canary, k.rate_bulk],
            args=[
                PREFIX,
                rate.limit if rate.limit is not None else -1,
                rate.remaining if rate.remaining is not None else -1,
                int(rate.reset_s * 1000) if rate.reset_s is not None else -1,
                status,
                int((ms.rate_burst_window_s + ms.rate_window_margin_s) * 1000),
                int(ms.burst_learn_s * 1000),
                self._window_ms,
                uuid.uuid4().hex,
                slot,
            ],
        )
        if _s(reply) == "resumed":
            log.info("canary call succeeded: the key resumes", upstream=m.name)
        learned = _s(reply) == "burst"
        if learned:
            log.info("429 with room left in the window: a burst rule, learned", upstream=m.name)
        return learned

    # -- operator controls --------------------------------------------------------------
    async def pause(
        self, reason: PauseReason = "manual", detail: str = "", *, upstream: str = ""
    ) -> None:
        """Pause the fleet (every key), or one key (`upstream`)."""
        if upstream:
            (name,) = await self._names(upstream)
            await self._report_outcome(name, "paused", reason, detail=detail)
            return
        async with self.redis.pipeline(transaction=True) as p:  # the first pause wins
            p.hsetnx(Keys.pause, "reason", reason)
            p.hsetnx(Keys.pause, "detail", detail)
            p.hsetnx(Keys.pause, "since", str(int(time.time() * 1000)))
            await p.execute()

    async def resume(self, *, upstream: str = "") -> bool:
        """Lift a pause: the fleet's and every key's, or one key's. Returns whether one was
        in force."""
        members = [Keys.up(n) for n in await self._names(upstream)]
        keys = [k for m in members for k in (m.pause, m.canary)]
        if not upstream:
            keys.append(Keys.pause)
        async with self.redis.pipeline(transaction=False) as p:
            for m in members:
                p.exists(m.pause)
            if not upstream:
                p.exists(Keys.pause)
            p.delete(*keys)
            replies = await p.execute()
        return any(int(r) for r in replies[:-1])

    async def pause_info(self) -> PauseInfo | None:
        """The fleet's manual pause, else (when every key is paused) the first key's."""
        status = await self.status()
        return status.pause

    async def is_paused(self) -> bool:
        return (await self.pause_info()) is not None

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
        state: GateState = _s(reply[0])  # type: ignore[assignment]  # the script's values
        if state != "closed":
            return Gate(state)
        return Gate(state, reason=_s(reply[1]), wait_s=int(reply[2]) / 1000)

    # -- what an operator sees ----------------------------------------------------------
    def _facts(self) -> dict[str, MemberFacts]:
        return {
            m.name: MemberFacts(
                order=i,
                route=m.upstream.route,
                rpm=m.flow.rpm_ceiling,
                inflight_cap=m.flow.inflight_cap,
                price_usd=m.upstream.price_usd,
                budget_usd=m.budget_usd,
            )
            for i, m in enumerate(self.pool)
        }

    async def publish_pool(self) -> None:
        """Tell the fleet which keys this worker's pool has (names and limits, never a key),
        so `status` shows them wherever it runs."""
        facts = {n: json.dumps(asdict(f)) for n, f in self._facts().items()}
        async with self.redis.pipeline(transaction=True) as p:
            p.delete(Keys.pool)
            p.hset(Keys.pool, mapping=facts)
            await p.execute()

    async def _names(self, upstream: str = "") -> list[str]:
        """Every known key's name, or just `upstream` (which must be one of them)."""
        known = [n for n, _ in await self._known_pool()]
        if upstream and upstream not in known:
            raise UnknownUpstream(
                f"no upstream key named {upstream!r} (the pool has: {', '.join(known)})"
            )
        return [upstream] if upstream else known

    async def _known_pool(self) -> list[tuple[str, MemberFacts]]:
        """The workers' pool as published, else this process's own."""
        published = await self.redis.hgetall(Keys.pool)  # type: ignore[misc]  # redis-py's stubs
        facts = {_s(k): MemberFacts(**json.loads(_s(v))) for k, v in published.items()}
        return sorted((facts or self._facts()).items(), key=lambda kv: kv[1].order)

    async def status(self) -> FlowStatus:
        """The fleet's pause and every key's state."""
        return await read_status(self.redis, await self._known_pool())

    async def snapshot(self) -> dict[str, Any]:
        """`status()` as plain data (the fleet summary first, then each key)."""
        return (await self.status()).as_dict()
