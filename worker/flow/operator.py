"""What an operator does and sees: pause and resume the fleet or one upstream, the pool's
published facts, and the status of every upstream."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from worker.flow.decisions import (
    PauseReason,
    UnknownUpstream,
)
from worker.flow.reports import PauseReport, Reports
from worker.flow.status import (
    FlowStatus,
    PauseInfo,
    UpstreamFacts,
    read_status,
)
from worker.keys import Keys
from worker.ledger.reads import text


class Controls(Reports):
    async def pause(
        self, reason: PauseReason = "manual", detail: str = "", *, upstream: str = ""
    ) -> None:
        """Pause the fleet (every upstream), or one upstream (`upstream`)."""
        if upstream:
            (name,) = await self._names(upstream)
            await self._report_outcome(name, "paused", pause=PauseReport(reason, detail))
            return
        async with self.redis.pipeline(transaction=True) as p:  # the first pause wins
            p.hsetnx(Keys.pause, "reason", reason)
            p.hsetnx(Keys.pause, "detail", detail)
            p.hsetnx(Keys.pause, "since", str(int(time.time() * 1000)))
            await p.execute()

    async def resume(self, *, upstream: str = "") -> bool:
        """Lift a pause: the fleet's and every upstream's, or one upstream's (with its wallet's:
        one balance, topped up once). Returns whether one was in force."""
        known = await self._known_pool()
        names = await self._names(upstream)
        if upstream:
            wallet = dict(known)[upstream].wallet
            names += [n for n, f in known if wallet and f.wallet == wallet and n != upstream]
        wallets = {f.wallet for n, f in known if n in names and f.wallet}
        ups = [Keys.up(n) for n in names]
        keys = [k for u in ups for k in (u.pause, u.canary)]
        keys += [Keys.wallet_canary(w) for w in sorted(wallets)]
        if not upstream:
            keys.append(Keys.pause)
        async with self.redis.pipeline(transaction=False) as p:
            for u in ups:
                p.exists(u.pause)
            if not upstream:
                p.exists(Keys.pause)
            p.delete(*keys)
            replies = await p.execute()
        return any(int(r) for r in replies[:-1])

    async def pause_info(self) -> PauseInfo | None:
        """The fleet's manual pause, else (when every upstream is paused) the first one's."""
        status = await self.status()
        return status.pause

    async def is_paused(self) -> bool:
        return (await self.pause_info()) is not None

    def _facts(self) -> dict[str, UpstreamFacts]:
        return {
            m.name: UpstreamFacts(
                order=i,
                route=m.upstream.route,
                rpm=m.flow.rpm_ceiling,
                inflight_cap=m.flow.inflight_cap,
                price_usd=m.upstream.price_usd,
                budget_usd=m.budget_usd,
                wallet=m.wallet,
                inflight_group=m.inflight_group,
                group_cap=m.group_cap,
            )
            for i, m in enumerate(self.pool)
        }

    async def publish_pool(self) -> None:
        """Tell the fleet which upstreams this worker's pool has (names and limits, never an
        API key), so `status` shows them wherever it runs."""
        facts = {n: json.dumps(asdict(f)) for n, f in self._facts().items()}
        async with self.redis.pipeline(transaction=True) as p:
            p.delete(Keys.pool)
            p.hset(Keys.pool, mapping=facts)
            await p.execute()

    async def _names(self, upstream: str = "") -> list[str]:
        """Every known upstream's name, or just `upstream` (which must be one of them)."""
        known = [n for n, _ in await self._known_pool()]
        if upstream and upstream not in known:
            raise UnknownUpstream(
                f"no upstream named {upstream!r} (the pool has: {', '.join(known)})"
            )
        return [upstream] if upstream else known

    async def _known_pool(self) -> list[tuple[str, UpstreamFacts]]:
        """The workers' pool as published, else this process's own."""
        published = await self.redis.hgetall(Keys.pool)  # type: ignore[misc]  # redis-py's stubs
        facts = {text(k): UpstreamFacts(**json.loads(text(v))) for k, v in published.items()}
        return sorted((facts or self._facts()).items(), key=lambda kv: kv[1].order)

    async def status(self) -> FlowStatus:
        """The fleet's pause and every upstream's state."""
        return await read_status(self.redis, await self._known_pool())
