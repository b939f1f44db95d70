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
from worker.keys import PREFIX, Keys
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
UpstreamState = Literal["open", "paused", "cooldown", "circuit_open", "circuit_half_open"]


@dataclass(frozen=True)
class Admitted:
    token: str  # the slot: `<upstream key name>/<hex>`
    kind: AdmitKind
    upstream: str  # the pool member's name


@dataclass(frozen=True)
class Denied:
    reason: DenyReason
    wait_s: float


@dataclass(frozen=True)
class PauseInfo:
    reason: str
    detail: str
    since_ms: int
    upstream: str = ""  # the key it applies to ('' = the whole fleet)


@dataclass(frozen=True)
class UpstreamStatus:
    """One key of the pool, as an operator sees it (named, never the key itself)."""

    name: str
    route: str
    state: UpstreamState
    pause: PauseInfo | None
    cooldown_s: float
    circuit: str
    inflight: int
    inflight_cap: int
    calls_last_minute: int
    rpm: int | None  # the limit in force: the configured tier, or the upstream's if smaller
    remaining: int | None  # what the upstream last said is left in its window
    spend_usd: float
    budget_usd: float | None


class UnknownUpstream(ValueError):
    """An operator named a key the pool does not have."""


def upstream_of(slot: str) -> str:
    """The pool member a slot token was admitted on (`<name>/<hex>`)."""
    return slot.partition("/")[0] if "/" in slot else ""


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
        self._window_ms = int((60 + settings.rate_window_margin_s) * 1000)
        self._limit_logged: set[str] = set()

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
        s = self.settings
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
            ms = m.settings
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
            interval = max(1.0, self.settings.lease_s / 4)
            while True:
                await asyncio.sleep(interval)
                try:
                    await self._renew(
                        keys=[inflight], args=[PREFIX, token, self.settings.lease_s * 1000]
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
        s = self.settings
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

    async def observe(
        self, upstream: str, rate: RateInfo, status: int, *, ok_token: str = ""
    ) -> bool:
        """Keep the fleet's view of a key's limit current (`x-ratelimit-*` on every answer);
        with `ok_token`, also settle a successful call's flow state (close the circuit, lift a
        pause its canary proved over). Returns True when a 429 taught a burst cap."""
        m = self.member(upstream)
        ms, k = m.settings, m.keys
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
            keys=[k.said, k.rate, k.rate_429, k.pause, k.circuit, k.canary],
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
                ok_token,
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
        s = self.settings
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
                route=m.settings.route,
                rpm=m.settings.rpm_ceiling,
                inflight_cap=m.settings.inflight_cap,
                price_usd=m.settings.price_usd,
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

    async def status(self) -> FleetFlow:
        """The fleet's pause and every key's state."""
        now_ms = int(time.time() * 1000)
        pool = await self._known_pool()
        async with self.redis.pipeline(transaction=False) as p:
            p.hgetall(Keys.pause)
            for name, _ in pool:
                k = Keys.up(name)
                p.hgetall(k.pause)
                p.pttl(k.cooldown)
                p.hgetall(k.circuit)
                p.zcount(k.inflight, now_ms, "+inf")
                p.zcount(k.rate, now_ms - 60_000, "+inf")
                p.zcount(k.rate_bulk, now_ms - 60_000, "+inf")
                p.hmget(k.said, ["limit", "remaining", "reset_at"])
                p.get(k.spend)
            replies = await p.execute()
        fleet_pause = _pause(replies[0])
        ups: list[UpstreamStatus] = []
        bulk = 0
        for i, (name, m) in enumerate(pool):
            pause_h, cool_ttl, circuit_h, inflight, calls, bulk_calls, said, spend = replies[
                1 + 8 * i : 9 + 8 * i
            ]
            bulk += int(bulk_calls)
            pause = _pause(pause_h, name)
            cooldown_s = cool_ttl / 1000 if cool_ttl and cool_ttl > 0 else 0.0
            circuit = {_s(k): _s(v) for k, v in circuit_h.items()}.get("state", "closed")
            limit, remaining, reset_at = (int(_s(v)) if v is not None else None for v in said)
            ceiling = m.rpm or None
            rpm = min(x for x in (ceiling, limit) if x) if (ceiling or limit) else None
            state: UpstreamState = (
                "paused"
                if pause
                else "cooldown"
                if cooldown_s
                else "circuit_open"
                if circuit == "open"
                else "circuit_half_open"
                if circuit == "half_open"
                else "open"
            )
            ups.append(
                UpstreamStatus(
                    name=name,
                    route=m.route,
                    state=state,
                    pause=pause,
                    cooldown_s=cooldown_s,
                    circuit=circuit,
                    inflight=int(inflight),
                    inflight_cap=m.inflight_cap,
                    calls_last_minute=int(calls),
                    rpm=rpm,
                    remaining=remaining if reset_at and reset_at > now_ms else None,
                    spend_usd=int(spend or 0) / 1e6,
                    budget_usd=m.budget_usd,
                )
            )
        return FleetFlow(manual_pause=fleet_pause, upstreams=ups, bulk_calls_last_minute=bulk)

    async def snapshot(self) -> dict[str, Any]:
        """`status()` as plain data (the fleet summary first, then each key)."""
        return (await self.status()).as_dict()


@dataclass(frozen=True)
class MemberFacts:
    """What the fleet publishes about one key of its pool (`Keys.pool`)."""

    order: int
    route: str
    rpm: int  # the configured tier (0 = auto)
    inflight_cap: int
    price_usd: float
    budget_usd: float | None


@dataclass(frozen=True)
class FleetFlow:
    """The fleet's flow state: its manual pause and each key's state."""

    manual_pause: PauseInfo | None
    upstreams: list[UpstreamStatus]
    bulk_calls_last_minute: int = 0

    @property
    def pause(self) -> PauseInfo | None:
        """Why nothing can start: the manual pause, or every key paused (the first's reason)."""
        if self.manual_pause:
            return self.manual_pause
        paused = [u.pause for u in self.upstreams if u.pause]
        return paused[0] if paused and len(paused) == len(self.upstreams) else None

    @property
    def cooldown_s(self) -> float:
        """> 0 only while every key is cooling down (the soonest)."""
        return min((u.cooldown_s for u in self.upstreams), default=0.0)

    @property
    def circuit(self) -> str:
        states = {u.circuit for u in self.upstreams}
        return next((c for c in ("closed", "half_open", "open") if c in states), "closed")

    @property
    def inflight(self) -> int:
        return sum(u.inflight for u in self.upstreams)

    @property
    def calls_last_minute(self) -> int:
        return sum(u.calls_last_minute for u in self.upstreams)

    def as_dict(self) -> dict[str, Any]:
        pause = self.pause
        return {
            "pause": asdict(pause) if pause else None,
            "cooldown_s": self.cooldown_s,
            "circuit": self.circuit,
            "inflight": self.inflight,
            "calls_last_minute": self.calls_last_minute,
            "upstreams": [asdict(u) for u in self.upstreams],
        }


def _pause(h: dict[Any, Any], upstream: str = "") -> PauseInfo | None:
    if not h:
        return None
    d = {_s(k): _s(v) for k, v in h.items()}
    return PauseInfo(
        reason=d.get("reason", "?"),
        detail=d.get("detail", ""),
        since_ms=int(d.get("since", 0) or 0),
        upstream=upstream,
    )
