"""Run leases, kept fleet-wide: the process-level half of the job's lifecycle (the Lua half
is in `worker/lua/`, the lifecycle itself in `worker/moves.py`).

Every worker process runs one `LeaseKeeper` task that
- renews the run leases of the jobs it runs (one heartbeat for all of them),
- reclaims runs whose lease expired anywhere in the fleet (a SIGKILLed worker, a lost host):
  their jobs are back on the queue within `run_lease_s` + one tick, whatever `job_timeout`,
- heals what nothing else would (one process at a time): a non-final job with no run, no queue entry or a stale
  arq in-progress key is re-enqueued; reservations no call holds are returned (`Slots.heal`).
Reclaiming waits until this process has been connected for two heartbeats, so after a Redis
restart every live owner renews its leases before anyone takes them over. Redis counts as back
(readiness) only once a tick's write went through: a full or read-only Redis answers PING.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from worker.keys import Keys
from worker.redis_conn import REDIS_DOWN, note_away, note_back, refusal
from worker.runtime import Runtime

log = structlog.get_logger("worker.leases")

HEAL_EVERY_S = 5.0  # one healer at a time for the whole fleet (a lock in Redis)
HEAL_STALE_MS = 10_000  # look at a non-final job again after this long
IN_PROGRESS_GRACE_MS = 10_000  # arq's in-progress key without a run, for longer: stale
# An idle tick's write: ZADD XX of a member never in the set changes nothing, yet Redis refuses
# it exactly when it refuses writes (OOM, READONLY, ...), which PING does not show.
_PROBE_MEMBER = "-"


class LeaseKeeper:
    def __init__(self, rt: Runtime, *, in_progress_ttl_ms: int) -> None:
        self.rt = rt
        self.lease_ms = rt.settings.jobs.run_lease_s * 1000
        self.tick_s = max(0.5, rt.settings.jobs.run_lease_s / 4)
        self.in_progress_ttl_ms = in_progress_ttl_ms
        self._connected_since: float | None = None
        self._last_heal = 0.0

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except REDIS_DOWN as e:
                kind = note_away(e, "heartbeat")
                if self.rt.redis_ok:
                    if refusal(e):
                        log.error(
                            "redis refuses writes; running jobs wait and hold their paid answers",
                            kind=kind,
                        )
                    else:
                        log.warning("redis unavailable; running jobs carry on", kind=kind)
                self.rt.redis_ok = False
                self._connected_since = None
            except Exception:  # never let the lease keeper die
                log.exception("lease keeper tick failed")
            await asyncio.sleep(self.tick_s)

    async def tick(self) -> None:
        ledger, redis = self.rt.ledger, self.rt.redis
        if self.rt.runs:
            lost = await ledger.heartbeat(dict(self.rt.runs), self.lease_ms)
        else:  # nothing to renew: still write, so "connected since" means what it says
            await redis.zadd(Keys.runs, {_PROBE_MEMBER: 0}, xx=True)
            lost = []
        now = time.monotonic()
        if not self.rt.redis_ok:
            log.info("redis is back")
            note_back()
        self.rt.redis_ok = True
        if self._connected_since is None:
            self._connected_since = now
            await self.rt.flow.publish_pool()  # on start, and again after a Redis restart
        for job_id in lost:
            if self.rt.runs.pop(job_id, None) is not None:
                log.warning(
                    "run lease lost (reclaimed elsewhere); its writes are fenced", job_id=job_id
                )
        if now - self._connected_since < 2 * self.tick_s:
            return
        back = await ledger.reclaim()
        if back:
            log.warning(
                "reclaimed runs whose worker stopped renewing", jobs=len(back), job_ids=back[:10]
            )
        if now - self._last_heal >= HEAL_EVERY_S and await redis.set(
            Keys.heal_lock, "1", nx=True, px=int(HEAL_EVERY_S * 1000)
        ):
            self._last_heal = now
            healed = await ledger.heal(
                stale_ms=HEAL_STALE_MS,
                in_progress_ttl_ms=self.in_progress_ttl_ms,
                grace_ms=IN_PROGRESS_GRACE_MS,
            )
            returned = await self.rt.flow.slots.heal()
            if healed or returned:
                log.warning(
                    "healed stranded jobs", jobs=len(healed), reservations_returned=returned
                )
