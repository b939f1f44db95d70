"""What calls tell flow control: a pause (402/401/403), a 429's cooldown, a server error, and
every answer's `x-ratelimit-*` word (`report.lua`, `observe.lua`), per key."""

from __future__ import annotations

import time
import uuid

from worker.flow.base import FlowBase, log
from worker.flow.decisions import (
    EASE_MS,
    LOCAL_PAUSE_S,
    PauseReason,
)
from worker.keys import PREFIX, Keys
from worker.ledger.reads import text
from worker.upstream.base import RateInfo


class Reports(FlowBase):
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
        return text(reply)

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
        if text(reply) == "resumed":
            log.info("canary call succeeded: the key resumes", upstream=m.name)
        learned = text(reply) == "burst"
        if learned:
            log.info("429 with room left in the window: a burst rule, learned", upstream=m.name)
        return learned
