"""What an operator does and sees: pause and resume the fleet or one key, the pool's published
facts, and the status of every key."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from worker.flow.decisions import (
    PauseReason,
    UnknownUpstream,
)
from worker.flow.reports import Reports
from worker.flow.status import (
    FlowStatus,
    MemberFacts,
    PauseInfo,
    read_status,
)
from worker.keys import Keys
from worker.ledger.reads import text


class Controls(Reports):
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
        facts = {text(k): MemberFacts(**json.loads(text(v))) for k, v in published.items()}
        return sorted((facts or self._facts()).items(), key=lambda kv: kv[1].order)

    async def status(self) -> FlowStatus:
        """The fleet's pause and every key's state."""
        return await read_status(self.redis, await self._known_pool())
