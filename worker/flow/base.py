"""What the parts of flow control share: Redis, the settings, the pool and the scripts."""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from redis.asyncio import Redis

from worker.flow.slots import Slots
from worker.keys import upstream_of
from worker.lua import register
from worker.settings import Settings
from worker.upstream.pool import Member, load_pool

log = structlog.get_logger("worker.flow")


class FlowBase:
    def __init__(
        self, redis: Redis, settings: Settings, pool: Sequence[Member] | None = None
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.pool: list[Member] = list(pool) if pool is not None else load_pool(settings)
        self.members = {m.name: m for m in self.pool}
        self._admit = register(redis, "admit")
        # the in-flight slots admission takes: each in its key's set (a removed key's: the first)
        self.slots = Slots(
            redis,
            lease_s=settings.flow.lease_s,
            inflight_of=lambda slot: self.member(upstream_of(slot)).keys.inflight,
        )
        self._report = register(redis, "report")
        self._gate = register(redis, "gate")
        self._observe = register(redis, "observe")
        self._window_ms = int((60 + settings.flow.rate_window_margin_s) * 1000)
        self._limit_logged: set[str] = set()
        self._paused_here: dict[str, tuple[str, float]] = {}  # key -> (reason, until monotonic)

    def member(self, name: str) -> Member:
        """The pool member `name` (a slot from before pools, or a removed key: the first)."""
        return self.members.get(name) or self.pool[0]
