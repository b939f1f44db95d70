"""Every Redis key name, in one place. `uq:` keys are ours; `arq:` keys belong to arq (their
prefixes come from `arq.constants`, never re-typed).

Lua scripts get the prefix as ARGV[1] and derive per-job / per-batch keys with the same
suffixes as the functions below (`job:`, `batch:`, `call:`, ...): see `worker/lua/_keys.lua`.
"""

from __future__ import annotations

from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix

PREFIX = "uq:"

ARQ_JOB_PREFIX: str = job_key_prefix  # arq:job:<id>        the payload arq runs
ARQ_IN_PROGRESS_PREFIX: str = in_progress_key_prefix  # arq:in-progress:<id>  set while running
ARQ_RETRY_PREFIX: str = retry_key_prefix  # arq:retry:<id>      arq's try counter

QUEUE_NAME = PREFIX + "queue"  # the live lane's arq queue (a sorted set scored by run-at ms)
BULK_QUEUE_NAME = PREFIX + "queue:bulk"  # the bulk lane's arq queue
QUEUES: dict[str, str] = {"live": QUEUE_NAME, "bulk": BULK_QUEUE_NAME}


def queue_for(lane: str) -> str:
    return QUEUES[lane]


class Keys:
    prefix = PREFIX

    # -- per job ------------------------------------------------------------------------
    @staticmethod
    def job(job_id: str) -> str:
        """Ledger record of one job (a hash): state, counters, spend, run token."""
        return f"{PREFIX}job:{job_id}"

    @staticmethod
    def paid(job_id: str) -> str:
        """What a billed upstream call returned (holds signed URLs): kept until stored, no TTL."""
        return f"{PREFIX}paid:{job_id}"

    @staticmethod
    def call(job_id: str) -> str:
        """The call journal (a hash): the job's latest upstream call, its idempotency key,
        slot token, reservation and outcome (sent | answered | pending | refused | unknown)."""
        return f"{PREFIX}call:{job_id}"

    @staticmethod
    def arq_job(job_id: str) -> str:
        return f"{ARQ_JOB_PREFIX}{job_id}"

    @staticmethod
    def arq_in_progress(job_id: str) -> str:
        return f"{ARQ_IN_PROGRESS_PREFIX}{job_id}"

    @staticmethod
    def final_channel(job_id: str) -> str:
        """Pub/sub channel told when a job reaches a final state (published by the ledger)."""
        return f"{PREFIX}final:{job_id}"

    # -- lifecycle ----------------------------------------------------------------------
    runs = PREFIX + "runs"  # sorted set: job id -> run lease expiry (ms, Redis time)
    active = PREFIX + "active"  # sorted set: non-final job id -> last checked (ms)
    heal_lock = PREFIX + "heal-lock"  # string: one healer at a time, fleet-wide

    # -- per batch / fleet --------------------------------------------------------------
    @staticmethod
    def batch(batch: str) -> str:
        """Per-batch counters: jobs per state, spend, optional `budget_micros` cap."""
        return f"{PREFIX}batch:{batch}"

    @staticmethod
    def batch_jobs(batch: str) -> str:
        return f"{PREFIX}batch:{batch}:jobs"

    @staticmethod
    def batch_final_channel(batch: str) -> str:
        return f"{PREFIX}batch-final:{batch}"

    @staticmethod
    def backfill(batch: str) -> str:
        """A backfill's checkpoint (listing position, counts)."""
        return f"{PREFIX}backfill:{batch}"

    batches = PREFIX + "batches"  # sorted set of batch names by first-seen time
    failures = PREFIX + "failures"  # sorted set of failed job ids by time (latest failures view)
    states = PREFIX + "states"  # hash: jobs per state, whole fleet
    intake = PREFIX + "intake"  # hash: notifications received / enqueued / duplicates / ignored
    dead_letters = PREFIX + "dead-letters"  # list: malformed notifications with their reason

    @staticmethod
    def finished_minute(minute: int) -> str:
        """Jobs that reached a final state in one minute (unix minute)."""
        return f"{PREFIX}finished:{minute}"

    @staticmethod
    def depth_minute(minute: int) -> str:
        return f"{PREFIX}depth:{minute}"

    # -- spend (integer micro-USD) ------------------------------------------------------
    spend_total = PREFIX + "spend:total"

    @staticmethod
    def spend_day(day: str) -> str:
        return f"{PREFIX}spend:day:{day}"

    @staticmethod
    def spend_batch(batch: str) -> str:
        return f"{PREFIX}spend:batch:{batch}"

    # -- flow control -------------------------------------------------------------------
    pause = PREFIX + "flow:pause"  # hash: reason, detail, since (ms); absent when running
    cooldown = PREFIX + "flow:cooldown"  # string: until-ms (global 429 cooldown)
    inflight = PREFIX + "flow:inflight"  # sorted set: slot token -> lease expiry ms
    rate = PREFIX + "flow:rate"  # sorted set: call start times (ms) in the rolling window
    circuit = PREFIX + "flow:circuit"  # hash: state, failures, opened_at
    canary = PREFIX + "flow:canary"  # string lock: one canary call at a time
    live_waiting = PREFIX + "flow:live-waiting"  # sorted set: live job id -> expiry ms
    rate_bulk = PREFIX + "flow:rate:bulk"  # sorted set: bulk call start times (the bulk floor)
    # hash: what the upstream said last (x-ratelimit-* headers) and a burst cap learned from a 429
    upstream = PREFIX + "flow:upstream"
    rate_429 = PREFIX + "flow:rate:429"  # sorted set: recent 429s (learning a burst rule)
    waiting_line = PREFIX + "flow:line"  # sorted set: job id -> lane rank + arrival ms
    waiting_seen = PREFIX + "flow:line:seen"  # sorted set: job id -> last asked (ms)
    wake = PREFIX + "flow:wake"  # pub/sub channel: a slot was freed
    # hash: slot token -> "est|reserved-day key|reserved-batch key|job id"
    budget_reserved = PREFIX + "budget:reserved"
    budget_reserved_total = PREFIX + "budget:reserved:total"

    @staticmethod
    def budget_reserved_day(day: str) -> str:
        return f"{PREFIX}budget:reserved:day:{day}"

    @staticmethod
    def budget_reserved_batch(batch: str) -> str:
        return f"{PREFIX}budget:reserved:batch:{batch}"
