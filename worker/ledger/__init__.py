"""The ledger: per-job status, attempts, spend and the run/call lifecycle, in Redis.

Every state change is one atomic Lua script (`worker/lua/`), so the fleet-wide counters always
agree with the per-job records, whichever worker or producer made the change. upscale-queue
targets a single Redis primary, as arq does, not Redis Cluster.
"""

from worker.ledger.records import (
    CallJournal,
    EnqueueResult,
    JobRecord,
    NewJob,
    PaidOutput,
    PaidResult,
    StartResult,
)
from worker.ledger.transitions import Fenced, KeyPaused, Ledger, record_invalid_payload

__all__ = [
    "CallJournal",
    "EnqueueResult",
    "Fenced",
    "JobRecord",
    "KeyPaused",
    "Ledger",
    "NewJob",
    "PaidOutput",
    "PaidResult",
    "StartResult",
    "record_invalid_payload",
]
