"""The job's state machine, as named transitions: each one Lua script (`worker/lua/`), atomic,
on Redis time, fenced by the run's token where it changes a run's state. Which script may move
a job (and its call journal) from which state to which is a table, `worker/moves.py`, that the
scripts enforce; `docs/lifecycle.md` draws it.

    enqueue -> start -> (call_begin -> call_answered | call_refused | call_unknown)*
            -> finish | wait | attempt_failed;   reclaim / heal put strays back;
    cancel ends a job from outside (after storing what it had paid for).

A final record is compacted and retired: a batch's goes on its done list (its report starts
the retention), another expires after `retention_ms`; one that holds money never does.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from worker.contract import ARQ_FUNCTION, LANES, FinalState, JobSpec, JobState
from worker.keys import (
    ARQ_IN_PROGRESS_PREFIX,
    ARQ_JOB_PREFIX,
    PREFIX,
    QUEUES,
    Keys,
    upstream_of,
)
from worker.ledger.reads import LedgerReads, text
from worker.ledger.records import (
    CallbackState,
    CallJournal,
    CancelOutcome,
    EnqueueOutcome,
    EnqueueResult,
    FinishOutcome,
    NewJob,
    PaidResult,
    StartResult,
    ledger_fields,
    spec_of,
)
from worker.lua import register
from worker.redis_conn import patiently
from worker.replicas import Replicas

KEEP_FAILED_PAID_MS = 7 * 86_400_000  # a failed job's paid result, kept for `upscale retry`
DEFAULT_RETENTION_MS = 86_400_000  # `UPSCALE_LEDGER_RETENTION`'s default (worker.settings)
_ARQ = [ARQ_FUNCTION, ARQ_JOB_PREFIX, ARQ_IN_PROGRESS_PREFIX]
# arq's payload: the function and no arguments (the run reads its spec from the ledger)
_PAYLOAD_HEAD = b'{"t":null,"f":"' + ARQ_FUNCTION.encode() + b'","a":[],"k":{},"et":'


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class Fenced(Exception):
    """This run no longer holds the job's lease (it was reclaimed): it must not write."""


class Cancelled(Fenced):
    """`upscale cancel` ended the job: this run stops without writing (nothing was paid)."""


class KeyPaused(Exception):
    """The call's upstream key (or the fleet) was paused after admission: it is not sent."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"paused ({reason}) before the call was sent")
        self.reason = reason


class Ledger(LedgerReads):
    def __init__(
        self,
        redis: Redis,
        *,
        retention_ms: int = DEFAULT_RETENTION_MS,
        replicas: Replicas | None = None,
    ) -> None:
        super().__init__(redis)
        self.retention_ms = retention_ms
        self.replicas = replicas or Replicas(redis)
        self._scripts = {
            name: register(redis, name)
            for name in (
                "enqueue",
                "start",
                "heartbeat",
                "wait",
                "attempt_failed",
                "finish",
                "call_begin",
                "call_answered",
                "call_refused",
                "call_unknown",
                "discard_paid",
                "reclaim",
                "heal",
                "cancel",
                "callback_mark",
            )
        }

    async def _run(
        self, name: str, keys: list[str], args: list[Any], patience_s: float | None = 300.0
    ) -> Any:
        script = self._scripts[name]
        return await patiently(
            lambda: script(keys=keys, args=[PREFIX, *args]), what=name, patience_s=patience_s
        )

    async def _durable(
        self, name: str, keys: list[str], args: list[Any], patience_s: float | None = 300.0
    ) -> Any:
        """`_run` for a money write: returns once the replicas have it (`worker.replicas`).
        The script and its WAIT share one connection; a connection lost in between runs the
        script again (each durable script answers a retry of the same call as the first)."""
        script = self._scripts[name]

        async def write_and_ack() -> Any:
            if await self.replicas.wanted() == 0:
                return await script(keys=keys, args=[PREFIX, *args])
            async with self.redis.client() as conn:
                reply = await script(keys=keys, args=[PREFIX, *args], client=conn)
                await self.replicas.ack(conn, name)
                return reply

        return await patiently(write_and_ack, what=name, patience_s=patience_s)

    async def enqueue(
        self, specs: list[JobSpec], *, requeue_failed: bool = False, chunk: int = 250
    ) -> list[EnqueueResult]:
        """Create ledger records and arq jobs, deduplicated (`created`, `duplicate`, `requeued`
        or `refused`: a cancelled batch)."""
        jobs = [NewJob(s.job_id, s.lane, s.batch or "", ledger_fields(s)) for s in specs]
        replies = await self.enqueue_new(jobs, requeue_failed=requeue_failed, chunk=chunk)
        return [
            EnqueueResult(job_id=job.job_id, outcome=outcome, state=state)
            for job, (outcome, state) in zip(jobs, replies, strict=True)
        ]

    async def enqueue_new(
        self, jobs: list[NewJob], *, requeue_failed: bool = False, chunk: int = 250
    ) -> list[tuple[EnqueueOutcome, str]]:
        """`enqueue` for jobs already made (a backfill makes millions: no model per job): one
        script per `chunk` jobs, the chunks pipelined (a few hundred jobs are a short, atomic
        step in Redis). Returns (outcome, state) per job, in order."""
        payload = _PAYLOAD_HEAD + str(int(time.time() * 1000)).encode() + b"}"
        script = self._scripts["enqueue"]
        head: list[str | bytes | int] = [
            PREFIX,
            ARQ_JOB_PREFIX,
            ARQ_IN_PROGRESS_PREFIX,
            payload,
            int(requeue_failed),
        ]
        batches = [_compact_json(jobs[i : i + chunk]) for i in range(0, len(jobs), chunk)]
        if await self.replicas.wanted() == 0:
            async with self.redis.pipeline(transaction=False) as pipe:
                for batch in batches:  # a NewJob is a tuple: JSON writes it as a row
                    await script(keys=[], args=[*head, batch], client=pipe)
                replies = await pipe.execute()
        else:  # acknowledged only once the replicas have it: one connection for WAIT
            replies = await self._enqueue_acked(script, head, batches)
        flat = [text(v) for reply in replies for v in reply]
        return list(zip(flat[::2], flat[1::2], strict=True))  # type: ignore[arg-type]  # the script's values

    async def _enqueue_acked(
        self, script: Any, head: list[str | bytes | int], batches: list[str]
    ) -> list[Any]:
        async with self.redis.client() as conn:
            replies = [await script(keys=[], args=[*head, b], client=conn) for b in batches]
            await self.replicas.ack(conn, "enqueue")
            return replies

    # -- a run --------------------------------------------------------------------------
    async def start(self, job_id: str, token: str, lease_ms: int) -> StartResult:
        """Take the run lease; returns what the run needs to resume (paid result, journal)."""
        reply = await self._run(
            "start",
            [Keys.job(job_id), Keys.runs],
            [job_id, token, lease_ms, ARQ_JOB_PREFIX, self.retention_ms],
        )
        outcome = text(reply[0])
        if outcome == "final":
            return StartResult(outcome="final", state=JobState(text(reply[1])))
        if outcome == "busy":
            return StartResult(outcome="busy", busy_ms=int(reply[1]))
        if outcome == "missing":
            return StartResult(outcome="missing")
        paid, flat = reply[2], reply[3]
        journal = dict(zip(map(text, flat[::2]), map(text, flat[1::2]), strict=True))
        return StartResult(
            outcome="ok",
            attempts=int(reply[1]),
            paid=PaidResult.model_validate_json(paid) if paid else None,
            journal=CallJournal.model_validate(journal) if journal else None,
        )

    async def spec(self, job_id: str) -> JobSpec | None:
        """The request a run carries out, from its record (None: no record). Raises
        ValueError for one that does not parse."""
        h = await patiently(lambda: self.redis.hgetall(Keys.job(job_id)), what="spec")  # type: ignore[arg-type,return-value]  # redis-py's async stubs
        return spec_of({text(k): text(v) for k, v in h.items()})

    async def journal(self, job_id: str) -> CallJournal | None:
        h = await patiently(lambda: self.redis.hgetall(Keys.call(job_id)), what="journal")  # type: ignore[arg-type,return-value]  # redis-py's async stubs
        if not h:
            return None
        return CallJournal.model_validate({text(k): text(v) for k, v in h.items()})

    async def heartbeat(self, runs: Mapping[str, str], lease_ms: int) -> list[str]:
        """Renew this process's run leases; returns the job ids it no longer holds."""
        if not runs:
            return []
        pairs = [x for item in runs.items() for x in item]
        lost = await self._script_once("heartbeat", [Keys.runs], [lease_ms, *pairs])
        return [text(j) for j in lost]

    async def _script_once(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._scripts[name](keys=keys, args=[PREFIX, *args])

    async def wait(self, job_id: str, token: str, reason: str, detail: str, delay_s: float) -> None:
        """Hand the job back to its queue without using an attempt."""
        reply = await self._run(
            "wait",
            [Keys.job(job_id)],
            [
                job_id,
                token,
                reason,
                detail[:300],
                int(max(0.0, delay_s) * 1000),
                *_ARQ,
                self.retention_ms,
            ],
        )
        if text(reply) == "fenced":
            raise Fenced(job_id)
        if text(reply) == "cancelled":
            raise Cancelled(job_id)

    async def attempt_failed(
        self,
        job_id: str,
        token: str,
        error_class: str,
        message: str,
        *,
        max_attempts: int,
        backoff_base_s: float,
        backoff_max_s: float,
    ) -> tuple[bool, int, float]:
        """Use an attempt. Returns (failed for good, attempts, retry delay s)."""
        reply = await self._run(
            "attempt_failed",
            [Keys.job(job_id)],
            [
                job_id,
                token,
                error_class,
                message[:1000],
                max_attempts,
                int(backoff_base_s * 1000),
                int(backoff_max_s * 1000),
                random.random(),
                *_ARQ,
                self.retention_ms,
            ],
        )
        outcome = text(reply[0])
        if outcome == "fenced":
            raise Fenced(job_id)
        if outcome == "cancelled":
            raise Cancelled(job_id)
        if outcome == "failed":
            return True, int(reply[1]), 0.0
        return False, int(reply[1]), int(reply[2]) / 1000

    async def finish(
        self,
        job_id: str,
        token: str,
        state: FinalState,
        fields: Mapping[str, str | int | float | None] | None = None,
    ) -> FinishOutcome:
        """A final state. `token=''` only for records no run can own (an unreadable payload).
        Returns 'ok', 'final' (already final: nothing changed) or 'missing' (no record)."""
        clean = {k: "" if v is None else str(v) for k, v in (fields or {}).items()}
        final = JobState(state)
        reply = text(
            await self._run(
                "finish",
                [Keys.job(job_id)],
                [job_id, token, final, json.dumps(clean), KEEP_FAILED_PAID_MS, self.retention_ms],
            )
        )
        if reply == "fenced":
            raise Fenced(job_id)
        return reply  # type: ignore[return-value]  # the script's values

    # -- the call journal ---------------------------------------------------------------
    async def call_begin(self, job_id: str, token: str, slot: str, est_micros: int) -> CallJournal:
        up = Keys.up(upstream_of(slot))
        reply = await self._durable(
            "call_begin",
            [
                Keys.job(job_id),
                Keys.call(job_id),
                up.rate,
                up.rate_bulk,
                Keys.pause,
                up.pause,
                up.canary,
            ],
            [job_id, token, slot, est_micros, ARQ_JOB_PREFIX, self.retention_ms],
        )
        if text(reply[0]) == "fenced":
            raise Fenced(job_id)
        if text(reply[0]) == "cancelled":
            raise Cancelled(job_id)
        if text(reply[0]) == "paused":
            raise KeyPaused(text(reply[1]))
        return CallJournal(n=int(reply[1]), idem=text(reply[2]), token=slot, state="sent")

    async def call_answered(
        self,
        job_id: str,
        slot: str,
        paid: PaidResult,
        *,
        replayed: bool = False,
        token: str = "",
        keep_slot: bool = False,
    ) -> str:
        """Save a paid answer with its spend: waits out a Redis outage for as long as it takes.
        `keep_slot`: an accepted async job keeps its in-flight slot until it ends (Ideogram
        counts a generation against the organisation's cap until it completes).""
        Returns 'saved' | 'duplicate' | 'pending' | 'stale' (a call its journal no longer holds,
        or a job already final: counted, not this run's result) | 'fenced' (saved, but the run
        `token` lost its lease: it must stop without writing) | 'orphan' (the job has no record:
        the run stores what it paid for)."""
        return text(
            await self._durable(
                "call_answered",
                [Keys.job(job_id), Keys.call(job_id), Keys.paid(job_id)],
                [
                    job_id,
                    slot,
                    paid.cost_micros,
                    paid.request_id or "",
                    paid.model_dump_json(),
                    "1" if paid.pending_id else "0",
                    "1" if replayed else "0",
                    token,
                    self.retention_ms,
                    "1" if keep_slot else "0",
                ],
                patience_s=None,
            )
        )

    async def call_refused(
        self, job_id: str, slot: str, request_id: str | None, *, drop_pending: bool = False
    ) -> None:
        await self._run(
            "call_refused",
            [Keys.job(job_id), Keys.call(job_id)],
            [job_id, slot, request_id or "", "1" if drop_pending else "0"],
            patience_s=None,
        )

    async def call_unknown(self, job_id: str, slot: str, *, drop_pending: bool = False) -> None:
        await self._run(
            "call_unknown",
            [Keys.job(job_id), Keys.call(job_id)],
            [job_id, slot, "1" if drop_pending else "0"],
            patience_s=None,
        )

    async def discard_paid(self, job_id: str, token: str) -> None:
        """Drop a paid result that can no longer give an output: the next attempt makes a new
        call. Raises `Fenced` when the run `token` lost its lease (nothing dropped)."""
        reply = await self._run(
            "discard_paid", [Keys.job(job_id), Keys.paid(job_id)], [job_id, token]
        )
        if text(reply) == "fenced":
            raise Fenced(job_id)

    # -- completion notices ---------------------------------------------------------------
    async def callback_try(self, record_key: str) -> int:
        """One more delivery attempt of a notice about `record_key`; returns the attempts so
        far (0: the record is gone)."""
        return int(await self._run("callback_mark", [record_key], ["try", "", 0]))

    async def callback_state(self, record_key: str, state: CallbackState, detail: str) -> None:
        await self._run("callback_mark", [record_key], [state, detail, int(time.time())])

    # -- cancel (any producer) ------------------------------------------------------------
    async def cancel(self, job_ids: list[str], *, chunk: int = 1000) -> list[CancelOutcome]:
        """End jobs `cancelled` (pipelined): at once where they hold no money, after storing
        what was paid where they do (`after_call`)."""
        out: list[CancelOutcome] = []
        script = self._scripts["cancel"]
        for start in range(0, len(job_ids), chunk):
            part = job_ids[start : start + chunk]
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in part:
                    await script(
                        keys=[Keys.job(job_id)],
                        args=[PREFIX, job_id, ARQ_JOB_PREFIX, self.retention_ms],
                        client=pipe,
                    )
                replies = await pipe.execute()
            out.extend(text(r) for r in replies)  # type: ignore[misc]  # the script's values
        return out

    # -- recovery (any live worker) -----------------------------------------------------
    async def reclaim(self, limit: int = 200) -> list[str]:
        """Put back every run whose lease expired; returns their job ids."""
        reply = await self._script_once("reclaim", [Keys.runs], [limit, *_ARQ])
        return [text(j) for j in reply]

    async def heal(
        self, *, stale_ms: int, in_progress_ttl_ms: int, grace_ms: int, limit: int = 500
    ) -> list[str]:
        """Re-enqueue stranded jobs, clear stale in-progress keys; returns their ids.
        (Reservations no call holds: `worker.flow.slots.Slots.heal`.)"""
        reply = await self._script_once(
            "heal",
            [Keys.active, Keys.runs, *(QUEUES[lane] for lane in LANES)],
            [stale_ms, limit, *_ARQ, grace_ms, in_progress_ttl_ms],
        )
        return [text(j) for j in reply]


async def record_invalid_payload(ledger: Ledger, job_id: str, error: str) -> None:
    """A payload that does not parse can never succeed: record it as failed if we know it."""
    await ledger.finish(
        job_id, "", JobState.FAILED, {"error_class": "InvalidPayload", "error": error[:1000]}
    )
