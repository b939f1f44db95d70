"""Money writes acknowledged by the replicas before they count (Redis `WAIT`).

Redis replicates asynchronously: a primary lost in a failover takes its last writes with it,
and a promoted replica has never heard of them. For most writes that costs a re-run (the
destination check finds the output). Three cost money or lose work, so they wait for the
replicas before the process acts on them:

- an enqueue acknowledgement (`created` must not vanish: nothing would ever run the job);
- a call journaled before it leaves (else the new primary does not know a call may be billed,
  and on a route that ignores idempotency keys a re-run buys the image again);
- a paid answer saved before anything else (else the re-run buys it again).

How many: `UPSCALE_REDIS_WAIT_REPLICAS`, by default every replica the primary reports
connected (`INFO replication`), re-read whenever a `WAIT` falls short: a replica that died
stops being waited for, a primary without replicas (or the promoted one) waits for none. A
replica that is connected but lagging is waited out, `WAIT` after `WAIT`, as an outage is.

What `WAIT` cannot promise: a write acknowledged by a replica that is not the one promoted,
or a failover inside the `WAIT` itself (the write is then unacknowledged, so the process has
not acted on it yet: a journaled call had not left, an answer is still held in memory).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker.settings import RedisSettings

_log = structlog.get_logger("worker.replicas")
_RECOUNT_S = 10.0  # how long a count of connected replicas is trusted

# Told of every wait (seconds waited, whether it fell short at least once): metrics.
_watchers: list[Callable[[float, bool], None]] = []


def watch_waits(callback: Callable[[float, bool], None]) -> None:
    _watchers.append(callback)


class Replicas:
    """How many replicas a money write waits for, and the waiting. `WAIT` covers the writes
    of the connection it runs on: the write and its `ack` share one connection (`Ledger`)."""

    def __init__(self, redis: Redis, want: int | None = None, timeout_ms: int = 1000) -> None:
        self.redis, self.want, self.timeout_ms = redis, want, timeout_ms
        self._connected = 0
        self._counted_at = -_RECOUNT_S

    @classmethod
    def from_settings(cls, redis: Redis, s: RedisSettings) -> Replicas:
        return cls(redis, s.wait_replicas, s.wait_timeout_ms)

    async def wanted(self, *, recount: bool = False) -> int:
        """`UPSCALE_REDIS_WAIT_REPLICAS`, else the replicas the primary reports connected
        (re-read every 10 s). Redis errors propagate (callers ride outages out around it)."""
        if self.want is not None:
            return self.want
        if recount or time.monotonic() - self._counted_at >= _RECOUNT_S:
            try:
                info = await self.redis.info("replication")
            except ResponseError as e:  # INFO not allowed (an ACL): say so once, wait for none
                if self._counted_at < 0:
                    _log.warning(
                        "cannot count replicas; set UPSCALE_REDIS_WAIT_REPLICAS", error=str(e)
                    )
                info = {}
            self._connected = int(info.get("connected_slaves", 0))
            self._counted_at = time.monotonic()
        return self._connected

    async def ack(self, conn: Redis, what: str) -> None:
        """Return once the replicas wanted have every write made on `conn`. Redis errors
        propagate: the caller runs its (idempotent) write again, since a `WAIT` on another
        connection would cover nothing."""
        want = await self.wanted()
        if want == 0:
            return
        t0, short = time.monotonic(), False
        while True:
            got = int(await conn.wait(want, self.timeout_ms))
            if got >= want:
                break
            want = await self.wanted(recount=True)  # a replica that died is not waited for
            if got >= want:
                break
            if not short:
                _log.warning(
                    "replicas have not acknowledged a money write; waiting",
                    what=what,
                    acknowledged=got,
                    wanted=want,
                )
            short = True
        for watcher in _watchers:
            watcher(time.monotonic() - t0, short)
