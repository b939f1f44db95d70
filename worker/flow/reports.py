"""What calls tell flow control: a pause (402/401/403, its reason as data), a 429's cooldown
and the in-flight cap it named, a server error, and every answer's `x-ratelimit-*` word
(`report.lua`, `observe.lua`), per upstream."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from worker.flow.base import FlowBase, log
from worker.flow.decisions import (
    EASE_MS,
    LOCAL_PAUSE_S,
    PAUSE_RULES,
    PauseReason,
    PauseScope,
)
from worker.keys import PREFIX, Keys
from worker.ledger.reads import text
from worker.upstream.base import RateInfo


@dataclass(frozen=True)
class PauseReport:
    """A pause as `report.lua` writes it: its reason, what the reason's rule makes of it
    (`PAUSE_RULES`) and how long a timed one lasts."""

    reason: PauseReason
    detail: str = ""
    timed_ms: int = 0  # > 0: it lifts itself after this long, unprobed
    scope: PauseScope = "upstream"


class Reports(FlowBase):
    async def _report_outcome(
        self,
        upstream: str,
        outcome: str,
        retry_after_ms: int = 0,
        ease_ms: int = 0,
        pause: PauseReport | None = None,
    ) -> str:
        s = self.settings.flow
        m = self.by_name.get(upstream)  # an operator's process may not have it: its own keys
        k = m.keys if m else Keys.up(upstream)
        lock = m.canary_lock if m else k.canary
        wallet = m.wallet if m else None
        p = pause or PauseReport("manual")
        others = []
        if p.scope == "wallet" and wallet:
            others = [m.keys.pause for m in self.wallet_of(upstream) if m.name != upstream]
        reply = await self._report(
            keys=[k.pause, k.cooldown, k.circuit, lock, *others],
            args=[
                PREFIX,
                outcome,
                "",
                p.reason,
                retry_after_ms,
                s.circuit_threshold,
                int(s.circuit_open_s * 1000),
                ease_ms,
                p.detail,
                int(s.canary_interval_s * 1000),
                int(PAUSE_RULES[p.reason].canary),
                p.timed_ms,
                p.scope if others else "upstream",
                wallet or "",
                upstream,
            ],
        )
        return text(reply)

    def _pause_scope(self, upstream: str, reason: PauseReason) -> PauseScope:
        route = self.pool_upstream(upstream).upstream.route
        return PAUSE_RULES[reason].scope_on(route)

    def pause_seen(self, upstream: str, reason: PauseReason) -> None:
        """A 402/401/403 just reached this process: its other calls on that upstream (on its
        wallet, for an empty wallet) stop at once, before the pause is in Redis (where every
        process's `call_begin` sees it)."""
        until = time.monotonic() + LOCAL_PAUSE_S
        wallet = self._pause_scope(upstream, reason) == "wallet"
        for m in self.wallet_of(upstream) if wallet else [self.pool_upstream(upstream)]:
            self._paused_here[m.name] = (reason, until)
        self._paused_here[upstream] = (reason, until)

    def paused_here(self, upstream: str) -> str | None:
        """The reason, if this process saw that upstream's pause moments ago."""
        seen = self._paused_here.get(upstream)
        if seen is None or time.monotonic() > seen[1]:
            return None
        return seen[0]

    async def report_paused(
        self,
        upstream: str,
        reason: PauseReason,
        detail: str = "",
        *,
        retry_after_s: float | None = None,
    ) -> None:
        """A 402 / 401 / 403 pauses that upstream, or (an empty wallet; a daily limit on
        Ideogram) every upstream of its wallet; the fleet stops when none is usable. A timed
        reason (a daily limit) lifts itself after `retry_after_s` (else at the next UTC
        midnight), unprobed."""
        rule = PAUSE_RULES[reason]
        timed_ms = 0
        if rule.timed:
            wait_s = retry_after_s if retry_after_s is not None else _to_utc_midnight()
            timed_ms = max(1000, int(wait_s * 1000))
        scope = self._pause_scope(upstream, reason)
        report = PauseReport(reason, detail, timed_ms, scope)
        await self._report_outcome(upstream, "paused", pause=report)
        log.warning(
            "upstream paused",
            upstream=upstream,
            reason=reason,
            detail=detail,
            scope=scope,
            wallet=self.pool_upstream(upstream).wallet,
            lifts_in_s=timed_ms / 1000 if timed_ms else None,
        )

    async def learn_inflight_cap(self, upstream: str, cap: int) -> None:
        """A 429 named the in-flight cap (`max_inflight_requests`): kept for its in-flight group
        (or the upstream itself) for a day; admission keeps under it when it is smaller."""
        word = self.pool_upstream(upstream).cap_word
        async with self.redis.pipeline(transaction=True) as p:
            p.hset(word, "max_inflight", str(cap))
            p.pexpire(word, INFLIGHT_WORD_MS)
            await p.execute()

    async def report_rate_limited(
        self, upstream: str, retry_after_s: float, *, ease: bool = True
    ) -> None:
        """One cooldown for the upstream; then half its rate for a while, unless the 429 was
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
        """Keep the fleet's view of an upstream's limit current (`x-ratelimit-*` on every answer).
        With the call's `slot`: a success also settles the call's flow state (close the
        circuit, lift a pause its canary proved over); a 429 takes the refused call out of the
        rate windows. Returns True when a 429 taught a burst cap."""
        m = self.pool_upstream(upstream)
        ms, k = m.flow, m.keys
        wallet = [u.keys.pause for u in self.wallet_of(upstream) if u.name != m.name]
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
            keys=[
                *(k.said, k.rate, k.rate_429, k.pause, k.circuit, k.canary, k.rate_bulk),
                *(m.canary_lock, *wallet),
            ],
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
        if text(reply) == "resumed":
            log.info(
                "canary call succeeded: the upstream resumes", upstream=m.name, wallet=m.wallet
            )
        learned = text(reply) == "burst"
        if learned:
            log.info("429 with room left in the window: a burst rule, learned", upstream=m.name)
        return learned


INFLIGHT_WORD_MS = 86_400_000  # an in-flight cap a 429 named holds this long (renewed by each)


def _to_utc_midnight() -> float:
    """Seconds to the next UTC midnight: when a daily limit that said nothing resets."""
    now = time.time()
    return 86_400 - now % 86_400
