"""Fleet-wide flow control (pause, budget, concurrency, rate, cooldown, circuit) in Redis."""

from worker.flow.control import Admitted, Denied, FlowControl, Gate, PauseInfo

__all__ = ["Admitted", "Denied", "FlowControl", "Gate", "PauseInfo"]
