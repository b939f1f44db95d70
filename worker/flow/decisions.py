"""What flow control decides, as values: why a call may not go now, and the constants that shape
waiting (apart from the scripts' callers, so every module can import them)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from worker.contract import usd_to_micros
from worker.settings import Route
from worker.upstream.errors import PauseReason as PauseReason  # re-exported: flow speaks it

PauseScope = Literal["upstream", "wallet"]


@dataclass(frozen=True)
class PauseRule:
    """What a pause reason does. `scope`: the upstream alone, or every upstream of its wallet
    (`wallet` in `UPSCALE_UPSTREAMS`; on the gateway a daily limit may be one key's own, on
    Ideogram keys cannot be scoped so it is the workspace's: `scope_gateway`). `canary`: one
    real call per `UPSCALE_CANARY_INTERVAL_S` may find it over; `timed`: it lifts itself when
    the upstream said the limit resets (no call is made to find out)."""

    scope: PauseScope
    canary: bool
    timed: bool = False
    scope_gateway: PauseScope | None = None
    line: str = ""  # what `upscale status` says

    def scope_on(self, route: Route) -> PauseScope:
        return (self.scope_gateway or self.scope) if route == "gateway" else self.scope


PAUSE_RULES: Mapping[PauseReason, PauseRule] = {
    "credits": PauseRule("wallet", canary=True, line="wallet empty: top up"),
    "daily_limit": PauseRule(
        "wallet", canary=False, timed=True, scope_gateway="upstream", line="daily limit reached"
    ),
    "cap_reached": PauseRule("upstream", canary=True, line="cap reached: raise its spend cap"),
    "auth": PauseRule("upstream", canary=True, line="key refused (401): fix the key"),
    "forbidden": PauseRule("upstream", canary=True, line="not allowed (403): check its access"),
    "manual": PauseRule("upstream", canary=False, line="paused by an operator"),
}
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
    "paused:daily_limit",
    "paused:cap_reached",
    "paused:auth",
    "paused:forbidden",
    "paused:manual",
    "budget:total",
    "budget:daily",
    "budget:batch",
    "budget:upstream",
]


# Denials that end at a known moment (the window frees a slot, a cooldown or an open circuit
# ends). A job waits a short one out; a longer one hands the job back to be picked up this
# much before that moment (and workers pick again this much before a cooldown ends), so the
# pick-up and its checks overlap the wait.
TIMED_DENIALS: frozenset[str] = frozenset({"rate", "cooldown", "circuit_open"})
PICKUP_LEAD_S = 1.0
# How soon a waiter in the job asks again, by why it waits. A freed in-flight slot names the
# line's head on `flow:wake`, so a waiter for one asks again only as the line's keep-alive (a
# waiter not seen for 5 s has gone) and to cover a wake-up that never came. No message ends the
# others (those ahead in line took the room, a live job waits, a half-open probe is out).
ASK_AGAIN_S: Mapping[DenyReason, float] = {
    "concurrency": 2.0,
    "queued": 0.5,
    "lane": 0.5,
    "circuit_half_open": 0.5,
}
# A pause seen in this process holds here until Redis has it (and a canary can lift it there).
LOCAL_PAUSE_S = 2.0


@dataclass(frozen=True)
class Admitted:
    token: str  # the slot: `<upstream name>/<hex>`
    kind: AdmitKind
    upstream: str  # the pool upstream's name


@dataclass(frozen=True)
class Denied:
    reason: DenyReason
    wait_s: float


class UnknownUpstream(ValueError):
    """An operator named an upstream the pool does not have."""


def cap(usd: float | None, applies: bool = True) -> int:
    """A budget cap in micro-USD for the Lua scripts (-1 = none)."""
    return usd_to_micros(usd) if usd is not None and applies else -1


def _today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())
