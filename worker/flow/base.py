"""What the parts of flow control share: Redis, the settings, the pool and the scripts."""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from redis.asyncio import Redis

from worker.flow.slots import Slots
from worker.keys import upstream_of
from worker.lua import register
from worker.settings import Settings
from worker.upstream.pool import PoolUpstream, load_pool

log = structlog.get_logger("worker.flow")


class FlowBase:
    def __init__(
        self, redis: Redis, settings: Settings, pool: Sequence[PoolUpstream] | None = None
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.pool: list[PoolUpstream] = list(pool) if pool is not None else load_pool(settings)
        self.by_name = {m.name: m for m in self.pool}
        self._admit = register(redis, "admit")
        # the in-flight slots admission takes: each in its upstream's set (a removed one's: the
        # first's)
        self.slots = Slots(
            redis,
            lease_s=settings.flow.lease_s,
            inflight_of=lambda slot: self.pool_upstream(upstream_of(slot)).keys.inflight,
        )
        self._report = register(redis, "report")
        self._gate = register(redis, "gate")
        self._observe = register(redis, "observe")
        self._window_ms = int((60 + settings.flow.rate_window_margin_s) * 1000)
        self._limit_logged: set[str] = set()
        # upstream name -> (reason, until monotonic)
        self._paused_here: dict[str, tuple[str, float]] = {}

    def pool_upstream(self, name: str) -> PoolUpstream:
        """The pool's upstream `name` (a slot from before pools, or a removed one: the first)."""
        return self.by_name.get(name) or self.pool[0]

    def wallet_of(self, name: str) -> list[PoolUpstream]:
        """The upstreams sharing `name`'s wallet (just `name` when it has none)."""
        u = self.pool_upstream(name)
        return [m for m in self.pool if m.wallet == u.wallet] if u.wallet else [u]
