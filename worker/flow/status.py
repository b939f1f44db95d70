"""What operators see of flow control: the fleet's pause and every upstream key's state."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from redis.asyncio import Redis

from worker.keys import Keys
from worker.ledger.reads import text

UpstreamState = Literal["open", "paused", "cooldown", "circuit_open", "circuit_half_open"]
CircuitState = Literal["closed", "half_open", "open"]
CIRCUIT_STATES: tuple[CircuitState, ...] = get_args(CircuitState)  # best first
_CIRCUITS: dict[str, CircuitState] = {c: c for c in CIRCUIT_STATES}


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
    circuit: CircuitState
    inflight: int
    inflight_cap: int
    calls_last_minute: int
    rpm: int | None  # the limit in force: the configured tier, or the upstream's if smaller
    remaining: int | None  # what the upstream last said is left in its window
    spend_usd: float
    budget_usd: float | None


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
class FlowStatus:
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
    def circuit(self) -> CircuitState:
        """The best of the keys' circuits (closed while any key's is)."""
        states = {u.circuit for u in self.upstreams}
        return next((c for c in CIRCUIT_STATES if c in states), "closed")

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


def pause_info(h: dict[Any, Any], upstream: str = "") -> PauseInfo | None:
    if not h:
        return None
    d = {text(k): text(v) for k, v in h.items()}
    return PauseInfo(
        reason=d.get("reason", "?"),
        detail=d.get("detail", ""),
        since_ms=int(d.get("since", 0) or 0),
        upstream=upstream,
    )


async def read_status(redis: Redis, pool: list[tuple[str, MemberFacts]]) -> FlowStatus:
    """The fleet's pause and every key's state, in one round trip."""
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as p:
        p.hgetall(Keys.pause)
        for name, _ in pool:
            k = Keys.up(name)
            p.hgetall(k.pause)
            p.pttl(k.cooldown)
            p.hgetall(k.circuit)
            p.zcount(k.inflight, now_ms, "+inf")
            p.zcount(k.sent, now_ms - 60_000, "+inf")  # calls that left, not admissions
            p.zcount(k.sent_bulk, now_ms - 60_000, "+inf")
            p.hmget(k.said, ["limit", "remaining", "reset_at"])
            p.get(k.spend)
        replies = await p.execute()
    fleet_pause = pause_info(replies[0])
    ups: list[UpstreamStatus] = []
    bulk = 0
    for i, (name, m) in enumerate(pool):
        pause_h, cool_ttl, circuit_h, inflight, calls, bulk_calls, said, spend = replies[
            1 + 8 * i : 9 + 8 * i
        ]
        bulk += int(bulk_calls)
        pause = pause_info(pause_h, name)
        cooldown_s = cool_ttl / 1000 if cool_ttl and cool_ttl > 0 else 0.0
        circuit = _CIRCUITS.get(
            {text(k): text(v) for k, v in circuit_h.items()}.get("state", ""), "closed"
        )
        limit, remaining, reset_at = (int(text(v)) if v is not None else None for v in said)
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
    return FlowStatus(manual_pause=fleet_pause, upstreams=ups, bulk_calls_last_minute=bulk)
