"""Fleet-wide flow control (pause, budget, concurrency, rate, cooldown, circuit) in Redis, per
upstream of the pool."""

from worker.flow.control import (
    ASK_AGAIN_S,
    PICKUP_LEAD_S,
    TIMED_DENIALS,
    Admitted,
    Denied,
    FlowControl,
    Gate,
)
from worker.flow.status import FlowStatus, PauseInfo, UpstreamStatus

__all__ = [
    "ASK_AGAIN_S",
    "PICKUP_LEAD_S",
    "TIMED_DENIALS",
    "Admitted",
    "Denied",
    "FlowControl",
    "FlowStatus",
    "Gate",
    "PauseInfo",
    "UpstreamStatus",
]
