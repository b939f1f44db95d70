"""Fleet-wide flow control: pause, budget, concurrency, rate, cooldown and circuit, in Redis.

A worker asks `admit()` before every upstream call and reports the outcome afterwards. All
decisions happen in Lua (`worker/lua/admit.lua`, `gate.lua`, `report.lua`, `observe.lua`), so N
processes on M machines act as one client. Every upstream of the pool (`worker.upstream.pool`)
has its own window, cooldown, circuit, pause and budget; admission takes the first one (in the
pool's order) that has room now. The call's outcome (and with it the slot and the budget
reservation) is settled by the ledger's call journal (`call_*.lua`).
"""

from __future__ import annotations

from worker.flow.admission import Admission
from worker.flow.decisions import (
    ASK_AGAIN_S,
    PICKUP_LEAD_S,
    TIMED_DENIALS,
    AdmitKind,
    Admitted,
    Denied,
    DenyReason,
    Gate,
    PauseReason,
    UnknownUpstream,
)
from worker.flow.operator import Controls

__all__ = [
    "ASK_AGAIN_S",
    "PICKUP_LEAD_S",
    "TIMED_DENIALS",
    "AdmitKind",
    "Admitted",
    "Denied",
    "DenyReason",
    "FlowControl",
    "Gate",
    "PauseReason",
    "UnknownUpstream",
]


class FlowControl(Admission, Controls):
    """The fleet's flow control as one object: admission, reports (`Controls` builds on them) and
    operator controls."""
