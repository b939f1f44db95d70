"""What operators see of flow control: the fleet's pause and every upstream's state, with a
status line per pause that says why and what lifts it."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from redis.asyncio import Redis

from worker.flow.decisions import PAUSE_RULES
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
    upstream: str = ""  # the upstream it applies to ('' = the whole fleet)
    until_ms: int = 0  # a timed pause (a daily limit) lifts itself then (0: not timed)
    scope: str = "upstream"  # `wallet`: its wallet's empty (or limited) balance paused it
    wallet: str = ""
    via: str = ""  # the upstream whose answer paused it
    probe: bool = False  # a canary call may find it over

    def line(self, now_ms: int | None = None) -> str:
        """One line for `upscale status` and the status page: why, and what lifts it."""
        rule = PAUSE_RULES.get(self.reason)  # type: ignore[call-overload]  # a stored word
        what = rule.line if rule else self.reason
        if self.scope == "wallet" and self.wallet:
            what += f" (wallet {self.wallet}"
            what += f", via {self.via})" if self.via and self.via != self.upstream else ")"
        if self.until_ms:
            now = now_ms if now_ms is not None else int(time.time() * 1000)
            at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.until_ms / 1000))
            left = _duration(max(0, self.until_ms - now) / 1000)
            what += f"; lifts itself at {at} (in {left}), no calls until then"
        elif self.probe:
            what += "; a canary call per interval finds it over, or `upscale resume`"
        elif self.reason != "manual":
            what += "; `upscale resume` once fixed"
        return f"{what}: {self.detail}" if self.detail else what


def _duration(s: float) -> str:
    h, rest = divmod(int(s), 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


@dataclass(frozen=True)
class UpstreamStatus:
    """One upstream of the pool, as an operator sees it (named, never its API key)."""

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
    wallet: str | None = None
    inflight_group: str | None = None
    group_inflight: int = 0  # calls in flight on every upstream of its group
    group_cap: int = 0  # the group's cap in force (a smaller one a 429 named wins)
    line: str = ""  # one line: its state, and for a pause why and what lifts it


@dataclass(frozen=True)
class UpstreamFacts:
    """What the fleet publishes about one upstream of its pool (`Keys.pool`)."""

    order: int
    route: str
    rpm: int  # the configured tier (0 = auto)
    inflight_cap: int
    price_usd: float
    budget_usd: float | None
    wallet: str | None = None
    inflight_group: str | None = None
    group_cap: int = 0


@dataclass(frozen=True)
class FlowStatus:
    """The fleet's flow state: its manual pause and each upstream's state."""

    manual_pause: PauseInfo | None
    upstreams: list[UpstreamStatus]
    bulk_calls_last_minute: int = 0

    @property
    def pause(self) -> PauseInfo | None:
        """Why nothing can start: the manual pause, or every upstream paused (the first's)."""
        if self.manual_pause:
            return self.manual_pause
        paused = [u.pause for u in self.upstreams if u.pause]
        return paused[0] if paused and len(paused) == len(self.upstreams) else None

    @property
    def cooldown_s(self) -> float:
        """> 0 only while every upstream is cooling down (the soonest)."""
        return min((u.cooldown_s for u in self.upstreams), default=0.0)

    @property
    def circuit(self) -> CircuitState:
        """The best of the upstreams' circuits (closed while any one's is)."""
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
            "pause": {**asdict(pause), "line": pause.line()} if pause else None,
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
    reason = d.get("reason", "?")
    return PauseInfo(
        reason=reason,
        detail=d.get("detail", ""),
        since_ms=int(d.get("since", 0) or 0),
        upstream=upstream,
        until_ms=int(d.get("until", 0) or 0),
        scope=d.get("scope", "upstream") or "upstream",
        wallet=d.get("wallet", ""),
        via=d.get("via", ""),
        probe=d.get("probe", "0" if reason == "manual" else "1") == "1",
    )


_PER_UPSTREAM = 9  # replies per upstream in `read_status`'s pipeline


async def read_status(redis: Redis, pool: list[tuple[str, UpstreamFacts]]) -> FlowStatus:
    """The fleet's pause and every upstream's state, in one round trip."""
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as p:
        p.hgetall(Keys.pause)
        for name, m in pool:
            k = Keys.up(name)
            p.hgetall(k.pause)
            p.pttl(k.cooldown)
            p.hgetall(k.circuit)
            p.zcount(k.inflight, now_ms, "+inf")
            p.zcount(k.sent, now_ms - 60_000, "+inf")  # calls that left, not admissions
            p.zcount(k.sent_bulk, now_ms - 60_000, "+inf")
            p.hmget(k.said, ["limit", "remaining", "reset_at"])
            p.get(k.spend)
            group = Keys.group_said(m.inflight_group) if m.inflight_group else k.said
            p.hget(group, "max_inflight")
        replies = await p.execute()
    fleet_pause = pause_info(replies[0])
    ups: list[UpstreamStatus] = []
    bulk = 0
    in_group: dict[str, int] = {}
    for i, (_, m) in enumerate(pool):
        if m.inflight_group:
            n = int(replies[1 + _PER_UPSTREAM * i + 3])
            in_group[m.inflight_group] = in_group.get(m.inflight_group, 0) + n
    for i, (name, m) in enumerate(pool):
        at = 1 + _PER_UPSTREAM * i
        pause_h, cool_ttl, circuit_h, inflight, calls, bulk_calls, said, spend, named = replies[
            at : at + _PER_UPSTREAM
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
        cap_said = int(text(named)) if named is not None else 0
        inflight_cap, group_cap = m.inflight_cap, m.group_cap
        if cap_said and m.inflight_group:
            group_cap = min(group_cap, cap_said)
        elif cap_said:
            inflight_cap = min(inflight_cap, cap_said)
        line = (
            pause.line(now_ms)
            if pause
            else f"cooling down {cooldown_s:.1f}s after a 429"
            if state == "cooldown"
            else state.replace("_", " ")
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
                inflight_cap=inflight_cap,
                calls_last_minute=int(calls),
                rpm=rpm,
                remaining=remaining if reset_at and reset_at > now_ms else None,
                spend_usd=int(spend or 0) / 1e6,
                budget_usd=m.budget_usd,
                wallet=m.wallet,
                inflight_group=m.inflight_group,
                group_inflight=in_group.get(m.inflight_group or "", 0),
                group_cap=group_cap,
                line=line,
            )
        )
    return FlowStatus(manual_pause=fleet_pause, upstreams=ups, bulk_calls_last_minute=bulk)
