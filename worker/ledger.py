"""The ledger: per-job status, attempts, spend and timings in Redis; spend per batch, day, total.

Every state change is one atomic Lua script, so the fleet-wide counters (jobs per state, per
batch) always agree with the per-job records, whichever worker or producer made the change.
Keys are derived inside the scripts from the job's own record (e.g. its batch): upscale-queue
targets a single Redis primary, as arq does, not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field
from redis.asyncio import Redis

from worker.contract import (
    ARQ_FUNCTION,
    QUEUES,
    JobSpec,
    JobState,
    Keys,
    micros_to_usd,
    queue_for,
)
from worker.redis_conn import serialize

# Shared Lua: move a job to a new state and keep the per-state counters consistent.
_TRANSITION_FN = """
local function transition(ledger, new_state, now)
  local old = redis.call('HGET', ledger, 'state')
  if old == new_state then return old end
  local batch = redis.call('HGET', ledger, 'batch')
  if old then redis.call('HINCRBY', 'uq:states', old, -1) end
  redis.call('HINCRBY', 'uq:states', new_state, 1)
  if batch and batch ~= '' then
    local bkey = 'uq:batch:' .. batch
    if old then redis.call('HINCRBY', bkey, old, -1) end
    redis.call('HINCRBY', bkey, new_state, 1)
    redis.call('HSET', bkey, 'updated_at', now)
  end
  redis.call('HSET', ledger, 'state', new_state, 'updated_at', now, new_state .. '_at', now)
  local job_id = string.sub(ledger, 8)
  if new_state == 'failed' then
    redis.call('ZADD', 'uq:failures', now, job_id)
    redis.call('ZREMRANGEBYRANK', 'uq:failures', 0, -10001)
  end
  if new_state == 'succeeded' or new_state == 'failed' or new_state == 'skipped' then
    -- wakes `wait_for()` callers: an event, not a polling loop
    redis.call('PUBLISH', 'uq:final:' .. job_id, new_state)
    local minute = 'uq:finished:' .. math.floor(now / 60000)
    redis.call('INCR', minute)
    redis.call('EXPIRE', minute, 7200)
    if batch and batch ~= '' then redis.call('PUBLISH', 'uq:batch-final:' .. batch, job_id) end
  end
  return old or ''
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# Enqueue: create the ledger record and the arq job in one step, deduplicated.
# KEYS: ledger, arq job, this lane's queue, the other lane's queue, arq in-progress key.
# ARGV: job id, arq payload, fields (json), batch, requeue_failed, lane
_ENQUEUE = (
    _TRANSITION_FN
    + """
local ledger, arq_job, queue, other_queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job_id, payload, fields, batch, requeue_failed = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local state = redis.call('HGET', ledger, 'state')
if state == 'succeeded' or state == 'skipped' then return {'duplicate', state} end
if state == 'failed' and requeue_failed ~= '1' then return {'duplicate', state} end
local in_arq = redis.call('EXISTS', arq_job) == 1
if state and in_arq then
  -- A live request for a job still queued in the bulk lane (e.g. a fresh upload already in a
  -- backfill) moves it to the live lane instead of leaving it behind the backlog.
  if ARGV[6] == 'live' and redis.call('EXISTS', KEYS[5]) == 0
     and redis.call('ZREM', other_queue, job_id) == 1 then
    redis.call('ZADD', queue, now_ms(), job_id)
    redis.call('HSET', ledger, 'lane', 'live')
  end
  return {'duplicate', state}
end
local now = now_ms()
if not in_arq then
  -- No TTL: a queued job must outlive any pause; the ledger, not a timer, decides its fate.
  redis.call('SET', arq_job, payload)
  redis.call('ZADD', queue, now, job_id)
end
if not state then
  local f = cjson.decode(fields)
  for k, v in pairs(f) do redis.call('HSET', ledger, k, v) end
  redis.call('HSET', ledger, 'created_at', now, 'attempts', 0, 'calls', 0, 'cost_micros', 0)
  if batch ~= '' then
    redis.call('HINCRBY', 'uq:batch:' .. batch, 'total', 1)
    redis.call('ZADD', 'uq:batches', 'NX', now, batch)
  end
  transition(ledger, 'queued', now)
  return {'created', 'queued'}
end
if state == 'failed' then redis.call('HSET', ledger, 'attempts', 0) end
transition(ledger, 'queued', now)
return {'requeued', state}
"""
)

# KEYS: ledger.  ARGV: new state, fields (json object, may be '{}'), only_if_not_final
_SET_STATE = (
    _TRANSITION_FN
    + """
local ledger = KEYS[1]
local cur = redis.call('HGET', ledger, 'state')
if not cur then return {'missing', ''} end
if ARGV[3] == '1' and (cur == 'succeeded' or cur == 'failed' or cur == 'skipped') then
  return {'final', cur}
end
local now = now_ms()
local f = cjson.decode(ARGV[2])
for k, v in pairs(f) do
  if v == '' then redis.call('HDEL', ledger, k) else redis.call('HSET', ledger, k, v) end
end
local old = transition(ledger, ARGV[1], now)
return {'ok', old}
"""
)

# Record a billed (or not billed) upstream call on the job, its batch, the day and the total.
# The paid result is saved in the same atomic step, so a crash can never leave a billed call
# recorded without what it bought (which would make the retry pay again).
# KEYS: ledger, paid.  ARGV: cost micros, request id ('' none), billed ('1'/'0'), paid json, ttl ms
_RECORD_CALL = """
local ledger = KEYS[1]
local cost = tonumber(ARGV[1])
if ARGV[4] ~= '' then redis.call('SET', KEYS[2], ARGV[4], 'PX', tonumber(ARGV[5])) end
redis.call('HINCRBY', ledger, 'calls', 1)
if ARGV[2] ~= '' then
  local ids = cjson.decode(redis.call('HGET', ledger, 'request_ids') or '[]')
  table.insert(ids, ARGV[2])
  redis.call('HSET', ledger, 'request_ids', cjson.encode(ids))
end
if ARGV[3] == '1' then
  redis.call('HINCRBY', ledger, 'billed_calls', 1)
  redis.call('HINCRBY', ledger, 'cost_micros', cost)
  local t = redis.call('TIME')
  local days = math.floor(tonumber(t[1]) / 86400)
  -- civil date from days since epoch (H. Hinnant's algorithm): Lua in Redis has no os.date
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  local day = string.format('%04d-%02d-%02d', y, m, d)
  redis.call('INCRBY', 'uq:spend:total', cost)
  redis.call('INCRBY', 'uq:spend:day:' .. day, cost)
  local batch = redis.call('HGET', ledger, 'batch')
  if batch and batch ~= '' then
    redis.call('INCRBY', 'uq:spend:batch:' .. batch, cost)
    redis.call('HINCRBY', 'uq:batch:' .. batch, 'spend_micros', cost)
  end
  return day
end
return ''
"""


class EnqueueResult(BaseModel):
    job_id: str
    outcome: str  # created | duplicate | requeued
    state: str


class JobRecord(BaseModel):
    """A ledger record as users see it (`upscale status`, the Python API, callbacks)."""

    job_id: str
    state: str
    source: str = ""
    source_etag: str | None = None
    source_version: str | None = None
    dest: str = ""
    batch: str | None = None
    lane: str = "live"
    model: str = ""
    attempts: int = 0
    calls: int = 0
    billed_calls: int = 0
    cost_usd: float = 0.0
    request_ids: list[str] = []
    wait_reason: str | None = None
    error_class: str | None = None
    error: str | None = None
    output_bytes: int | None = None
    output_resolution: str | None = None
    output_etag: str | None = None
    output_content_type: str | None = None
    timings_ms: dict[str, int] = {}
    created_at: int | None = None
    updated_at: int | None = None
    callback_state: str | None = None  # delivered | retrying | failed | refused
    callback_attempts: int = 0
    callback_detail: str | None = None
    payload: dict[str, Any] | None = Field(default=None, exclude=True)

    @classmethod
    def from_hash(cls, job_id: str, h: dict[str, str]) -> JobRecord:
        def opt_int(name: str) -> int | None:
            return int(h[name]) if h.get(name) else None

        timings = {
            k[2:-3]: int(v) for k, v in h.items() if k.startswith("t_") and k.endswith("_ms")
        }
        return cls(
            job_id=job_id,
            state=h.get("state", ""),
            source=h.get("source", ""),
            source_etag=h.get("source_etag") or None,
            source_version=h.get("source_version") or None,
            dest=h.get("dest", ""),
            batch=h.get("batch") or None,
            lane=h.get("lane", "live"),
            model=h.get("model", ""),
            attempts=int(h.get("attempts", 0)),
            calls=int(h.get("calls", 0)),
            billed_calls=int(h.get("billed_calls", 0)),
            cost_usd=micros_to_usd(int(h.get("cost_micros", 0))),
            request_ids=json.loads(h.get("request_ids", "[]")),
            wait_reason=h.get("wait_reason") or None,
            error_class=h.get("error_class") or None,
            error=h.get("error") or None,
            output_bytes=opt_int("output_bytes"),
            output_resolution=h.get("output_resolution") or None,
            output_etag=h.get("output_etag") or None,
            output_content_type=h.get("output_content_type") or None,
            timings_ms=timings,
            created_at=opt_int("created_at"),
            updated_at=opt_int("updated_at"),
            callback_state=h.get("callback_state") or None,
            callback_attempts=int(h.get("callback_attempts", 0)),
            callback_detail=h.get("callback_detail") or None,
            payload=json.loads(h["spec"]) if h.get("spec") else None,
        )

    @property
    def final(self) -> bool:
        return JobState(self.state).final if self.state else False


def _ledger_fields(spec: JobSpec) -> dict[str, str]:
    return {
        "source": spec.source.uri,
        "source_etag": spec.source.etag or "",
        "source_version": spec.source.version_id or "",
        "dest": spec.dest.uri,
        "batch": spec.batch or "",
        "lane": spec.lane,
        "model": spec.model,
        # The whole request, so a job can be re-enqueued from its record (retry, lost-job heal).
        "spec": json.dumps(spec.to_payload(), separators=(",", ":")),
    }


class Ledger:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._enqueue = redis.register_script(_ENQUEUE)
        self._set_state = redis.register_script(_SET_STATE)
        self._record_call = redis.register_script(_RECORD_CALL)

    # -- enqueue ------------------------------------------------------------------------
    async def enqueue(
        self, specs: list[JobSpec], *, requeue_failed: bool = False, chunk: int = 1000
    ) -> list[EnqueueResult]:
        """Create ledger records and arq jobs, deduplicated, pipelined in chunks."""
        results: list[EnqueueResult] = []
        now_ms = int(time.time() * 1000)
        for start in range(0, len(specs), chunk):
            part = specs[start : start + chunk]
            async with self.redis.pipeline(transaction=False) as pipe:
                for spec in part:
                    job_id = spec.job_id
                    payload = serialize(
                        {
                            "t": None,
                            "f": ARQ_FUNCTION,
                            "a": [spec.to_payload()],
                            "k": {},
                            "et": now_ms,
                        }
                    )
                    await self._enqueue(
                        keys=[
                            Keys.job(job_id),
                            f"arq:job:{job_id}",
                            queue_for(spec.lane),
                            queue_for("bulk" if spec.lane == "live" else "live"),
                            f"arq:in-progress:{job_id}",
                        ],
                        args=[
                            job_id,
                            payload,
                            json.dumps(_ledger_fields(spec)),
                            spec.batch or "",
                            "1" if requeue_failed else "0",
                            spec.lane,
                        ],
                        client=pipe,
                    )
                replies = await pipe.execute()
            for spec, (outcome, state) in zip(part, replies, strict=True):
                results.append(
                    EnqueueResult(job_id=spec.job_id, outcome=_s(outcome), state=_s(state))
                )
        return results

    # -- transitions --------------------------------------------------------------------
    async def set_state(
        self,
        job_id: str,
        state: JobState,
        *,
        unless_final: bool = True,
        extra: Mapping[str, str | int | float | None] | None = None,
        **fields: str | int | float | None,
    ) -> str:
        """Move a job to `state` and set fields (None clears a field). Returns the old state."""
        merged = {**(extra or {}), **fields}
        clean = {k: "" if v is None else str(v) for k, v in merged.items()}
        outcome, old = await self._set_state(
            keys=[Keys.job(job_id)],
            args=[state.value, json.dumps(clean), "1" if unless_final else "0"],
        )
        return _s(old) if _s(outcome) == "ok" else _s(outcome)

    async def update(self, job_id: str, **fields: str | int | float) -> None:
        await self.redis.hset(Keys.job(job_id), mapping={k: str(v) for k, v in fields.items()})  # type: ignore[misc]  # redis-py's async stubs

    async def incr(self, job_id: str, field: str, by: int = 1) -> int:
        return int(await self.redis.hincrby(Keys.job(job_id), field, by))  # type: ignore[misc]  # redis-py's async stubs

    async def record_call(
        self,
        job_id: str,
        *,
        cost_micros: int,
        request_id: str | None,
        billed: bool,
        paid: dict[str, Any] | None = None,
        paid_ttl_s: int = 86_400,
    ) -> None:
        """Count an upstream call (and its spend if billed); save what it returned, atomically."""
        await self._record_call(
            keys=[Keys.job(job_id), Keys.paid(job_id)],
            args=[
                cost_micros,
                request_id or "",
                "1" if billed else "0",
                json.dumps(paid) if paid is not None else "",
                paid_ttl_s * 1000,
            ],
        )

    async def save_paid(self, job_id: str, paid: dict[str, Any], ttl_s: int = 86_400) -> None:
        await self.redis.set(Keys.paid(job_id), json.dumps(paid), ex=ttl_s)

    async def load_paid(self, job_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(Keys.paid(job_id))
        return json.loads(raw) if raw else None

    async def drop_paid(self, job_id: str) -> None:
        await self.redis.delete(Keys.paid(job_id))

    # -- reads --------------------------------------------------------------------------
    async def get(self, job_id: str) -> JobRecord | None:
        h = await self.redis.hgetall(Keys.job(job_id))  # type: ignore[misc]  # redis-py's async stubs
        if not h:
            return None
        return JobRecord.from_hash(job_id, {_s(k): _s(v) for k, v in h.items()})

    async def wait_final(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Wait for a job to reach a final state: subscribe first, then look, so no event
        slips between the two. Raises TimeoutError, KeyError for an unknown job."""
        async with self.redis.pubsub() as ps:
            await ps.subscribe(Keys.final_channel(job_id))
            async with asyncio.timeout(timeout):
                while True:
                    rec = await self.get(job_id)
                    if rec is None:
                        raise KeyError(f"no such job: {job_id}")
                    if rec.final:
                        return rec
                    # Wake on the event; re-check every few seconds in case Redis restarted.
                    await ps.get_message(ignore_subscribe_messages=True, timeout=5.0)

    async def batch_summary(self, batch: str) -> dict[str, Any]:
        h = await self.redis.hgetall(Keys.batch(batch))  # type: ignore[misc]  # redis-py's async stubs
        counts = {
            _s(k): int(v) for k, v in h.items() if _s(k) in {s.value for s in JobState} and int(v)
        }
        data = {_s(k): _s(v) for k, v in h.items()}
        return {
            "batch": batch,
            "total": int(data.get("total", 0)),
            "states": counts,
            "spend_usd": micros_to_usd(int(data.get("spend_micros", 0))),
        }

    async def state_counts(self) -> dict[str, int]:
        h = await self.redis.hgetall(Keys.states)  # type: ignore[misc]  # redis-py's async stubs
        return {_s(k): int(v) for k, v in h.items() if int(v)}

    async def spend(self, day: str | None = None) -> dict[str, Any]:
        day = day or time.strftime("%Y-%m-%d", time.gmtime())
        total, today = await self.redis.mget(Keys.spend_total, Keys.spend_day(day))
        return {
            "total_usd": micros_to_usd(int(total or 0)),
            "today_usd": micros_to_usd(int(today or 0)),
            "day": day,
        }

    async def finished_per_minute(self, minutes: int = 60) -> list[int]:
        """Jobs that reached a final state in each of the last `minutes` minutes (oldest first)."""
        now_min = int(time.time() // 60)
        keys = [f"uq:finished:{m}" for m in range(now_min - minutes + 1, now_min + 1)]
        return [int(v or 0) for v in await self.redis.mget(keys)]

    async def sample_depth(self, minute: int) -> None:
        """Record the queue depth once per minute (first worker to get there wins)."""
        depth = sum([int(await self.redis.zcard(q)) for q in QUEUES.values()])
        await self.redis.set(f"uq:depth:{minute}", depth, nx=True, ex=7200)

    async def depth_per_minute(self, minutes: int = 60) -> list[int | None]:
        now_min = int(time.time() // 60)
        keys = [f"uq:depth:{m}" for m in range(now_min - minutes + 1, now_min + 1)]
        return [int(v) if v is not None else None for v in await self.redis.mget(keys)]

    async def recent_batches(self, limit: int = 20) -> list[dict[str, Any]]:
        names = await self.redis.zrevrange(Keys.batches, 0, limit - 1)
        return [await self.batch_summary(_s(n)) for n in names]

    async def recent_failures(self, limit: int = 20) -> list[JobRecord]:
        ids = await self.redis.zrevrange(Keys.failures, 0, limit - 1)
        records = [await self.get(_s(i)) for i in ids]
        return [r for r in records if r is not None]


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
