"""Every Redis key name, in one place. `uq:` keys are ours; `arq:` keys belong to arq (their
prefixes come from `arq.constants`, never re-typed).

Lua scripts get the prefix as ARGV[1] and derive per-job / per-batch keys with the same
suffixes as the functions below (`job:`, `batch:`, `call:`, ...): see `worker/lua/_keys.lua`.
"""

from __future__ import annotations

from dataclasses import dataclass

from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix

PREFIX = "uq:"

ARQ_JOB_PREFIX: str = job_key_prefix  # arq:job:<id>        the payload arq runs
ARQ_IN_PROGRESS_PREFIX: str = in_progress_key_prefix  # arq:in-progress:<id>  set while running
ARQ_RETRY_PREFIX: str = retry_key_prefix  # arq:retry:<id>      arq's try counter

QUEUE_NAME = PREFIX + "queue"  # the live lane's arq queue (a sorted set scored by run-at ms)
BULK_QUEUE_NAME = PREFIX + "queue:bulk"  # the bulk lane's arq queue
# every lane's queue (the scripts' `LANES`, in `_contract.lua`, is generated from it)
QUEUES: dict[str, str] = {"live": QUEUE_NAME, "bulk": BULK_QUEUE_NAME}


def queue_for(lane: str) -> str:
    return QUEUES[lane]


def first_of(queue: str) -> str:
    """A queue's money-first set (zset: job id -> due ms): due work holding money (a paid
    result not yet stored, an upstream job still running, a call possibly billed) is claimed
    before the rest of the queue, however long its backlog (`claim.lua`; `_keys.lua` k_first)."""
    return queue + ":first"


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
    def batch_done(batch: str) -> str:
        """A batch's final job ids in the order they ended (list; each id once): what its
        completion report walks. Expires with the records once the report is written."""
        return f"{PREFIX}batch:{batch}:done"

    @staticmethod
    def batch_open(batch: str) -> str:
        """A batch's job ids not yet final (set): what `upscale cancel --batch` walks, so a
        cancel costs the batch's size, not the backlog's."""
        return f"{PREFIX}batch:{batch}:open"

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

    @staticmethod
    def spend_day_by(day: str) -> str:
        """A day's spend (hash): `<pool upstream>|<batch>` -> micro-USD (either may be ''):
        what `upscale reconcile` holds against the upstream's books (`_money.lua` add_spend)."""
        return f"{PREFIX}spend:day:{day}:by"

    # string: the last `upscale reconcile` (JSON), shown by the status page and /metrics
    reconcile_last = PREFIX + "reconcile:last"

    # -- flow control, fleet-wide (per upstream of the pool: `Keys.up(name)`) ----------------
    pause = PREFIX + "flow:pause"  # hash: reason, detail, since (ms): a manual pause of all
    live_waiting = PREFIX + "flow:live-waiting"  # sorted set: live job id -> expiry ms
    waiting_line = PREFIX + "flow:line"  # sorted set: job id -> lane rank + arrival ms
    waiting_seen = PREFIX + "flow:line:seen"  # sorted set: job id -> last asked (ms)
    # pub/sub channel: a slot was freed (`ids:` the line's head, who may take it), or a limit
    # became known (everyone re-asks)
    wake = PREFIX + "flow:wake"
    # hash: upstream name -> its public facts (JSON: order, route, tier, cap, price, budget,
    # wallet, group), written by workers so `status` anywhere shows every upstream without the
    # pool's config
    pool = PREFIX + "pool"

    @staticmethod
    def up(name: str) -> UpstreamKeys:
        """The flow state of one upstream of the pool (`UPSCALE_UPSTREAMS`)."""
        return UpstreamKeys.named(name)

    @staticmethod
    def wallet_canary(wallet: str) -> str:
        """String lock (PX the canary interval): one canary call at a time for every upstream
        sharing `wallet` (an upstream without one uses its own `canary`)."""
        return f"{PREFIX}wallet:{wallet}:canary"

    @staticmethod
    def group_said(group: str) -> str:
        """Hash: what the upstream said of an in-flight group's cap (`max_inflight`, from a
        429's `max_inflight_requests`; `seen` ms). An upstream without a group keeps it in its
        own `said`."""
        return f"{PREFIX}group:{group}:said"

    # hash: slot token -> "est|reserved-day key|reserved-batch key|job id"
    budget_reserved = PREFIX + "budget:reserved"
    budget_reserved_total = PREFIX + "budget:reserved:total"

    @staticmethod
    def budget_reserved_day(day: str) -> str:
        return f"{PREFIX}budget:reserved:day:{day}"

    @staticmethod
    def budget_reserved_batch(batch: str) -> str:
        return f"{PREFIX}budget:reserved:batch:{batch}"


def upstream_of(slot: str) -> str:
    """The pool upstream a slot token was admitted on (`<name>/<hex>`; `_keys.lua`:
    `slot_upstream`)."""
    return slot.partition("/")[0] if "/" in slot else ""


@dataclass(frozen=True)
class UpstreamKeys:
    """One upstream's own window, cooldown, circuit, pause and budget (`uq:up:<name>:`).

    A slot token is `<name>/<hex>`: scripts that settle a call find its upstream's in-flight
    set and budget from the token (`_keys.lua`: `k_up`, `slot_upstream`)."""

    # hash: reason, detail, since (ms), probe (1: a canary may find it over), scope (upstream |
    # wallet), wallet, via (the upstream whose answer paused it), until (ms, a timed pause:
    # the hash expires then); a 402 / 401 / 403, or a manual pause of this upstream
    pause: str
    cooldown: str  # string: until-ms (this upstream's 429 cooldown)
    circuit: str  # hash: state, failures, open_until, ease_until
    inflight: str  # sorted set: slot token -> lease expiry ms
    rate: str  # sorted set: call start times (ms) in the rolling window
    canary: str  # string lock: one canary call at a time
    # hash: the upstream's x-ratelimit-* word, a burst cap learned from a 429, and the in-flight
    # cap a 429 named (`max_inflight`, when it is in no in-flight group)
    said: str
    rate_429: str  # sorted set: recent 429s (learning a burst rule)
    rate_bulk: str  # sorted set: bulk call start times (bulk floor, even bulk pacing)
    sent: str  # sorted set: calls that left in the last minute (slot -> send ms): calls/min
    sent_bulk: str  # sorted set: the bulk lane's share of `sent`
    spend: str  # string: micro-USD billed or possibly billed on this upstream, ever
    reserved: str  # string: micro-USD reserved by this upstream's calls in flight

    @classmethod
    def named(cls, name: str) -> UpstreamKeys:
        base = f"{PREFIX}up:{name}:"
        return cls(**{f: base + f.replace("_", "-") for f in cls.__dataclass_fields__})

    def admission(self) -> list[str]:
        """The KEYS `admit.lua` takes of the upstream itself, in the order of its
        `UPSTREAM_KEYS` (`ADMISSION` names them; its wallet's canary lock and its cap's word
        follow, `PoolUpstream.canary_lock` / `.cap_word`)."""
        return [getattr(self, name) for name in ADMISSION]


# `admit.lua`'s per-upstream KEYS, by name (`UpstreamKeys` fields).
ADMISSION: tuple[str, ...] = (
    "pause",
    "cooldown",
    "circuit",
    "inflight",
    "rate",
    "canary",
    "said",
    "rate_bulk",
    "spend",
    "reserved",
)
