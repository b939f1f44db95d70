"""Fleet-wide flow control (pause, budget, concurrency, rate, cooldown, circuit) in Redis, per
upstream key of the pool."""

from worker.flow.control import (
    PICKUP_LEAD_S,
    TIMED_DENIALS,
    UNWOKEN_DENIALS,
    WOKEN_DENIALS,
    Admitted,
    Denied,
    FlowControl,
    Gate,
)
from worker.flow.status import FlowStatus, PauseInfo, UpstreamStatus

__all__ = [
    "PICKUP_LEAD_S",
    "TIMED_DENIALS",
    "UNWOKEN_DENIALS",
    "WOKEN_DENIALS",
    "Admitted",
    "Denied",
    "FlowControl",
    "FlowStatus",
    "Gate",
    "PauseInfo",
    "UpstreamStatus",
]
