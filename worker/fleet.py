"""The fleet as operators see it: `Fleet` (pause, resume, flow-control status) and the typed
read models behind `upscale status` / `spend`, the dashboard's JSON (`/api/status`,
`/api/batches`) and its fleet gauges (`/metrics`).

`producers.api.Producer` builds them from the ledger, the queues and flow control; renderers
read attributes, and JSON is `model_dump(mode="json")` (the shape the status page reads).
"""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    computed_field,
    model_serializer,
)
from redis.asyncio import Redis

from worker.contract import JobState, Lane
from worker.flow import FlowControl, PauseInfo
from worker.flow.decisions import PauseReason
from worker.flow.status import FlowStatus
from worker.settings import Settings


class _ReadModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SpendSummary(_ReadModel):
    """Spend today (the UTC `day`, `YYYY-MM-DD`) and in total."""

    total_usd: float
    today_usd: float
    day: str


class Budgets(_ReadModel):
    """The fleet's spend caps (`None`: no cap) and what is left of them."""

    total_usd: float | None = None
    daily_usd: float | None = None
    total_left_usd: float | None = None
    daily_left_usd: float | None = None

    @classmethod
    def left(cls, total_usd: float | None, daily_usd: float | None, spend: SpendSummary) -> Budgets:
        return cls(
            total_usd=total_usd,
            daily_usd=daily_usd,
            total_left_usd=None if total_usd is None else max(0.0, total_usd - spend.total_usd),
            daily_left_usd=None if daily_usd is None else max(0.0, daily_usd - spend.today_usd),
        )

    @property
    def spent(self) -> bool:
        """A cap is reached: no new call may start."""
        return any(v is not None and v <= 0 for v in (self.total_left_usd, self.daily_left_usd))


class BatchSummary(_ReadModel):
    """A batch's jobs (`total` 0: no such batch), how many are in each state and how many are
    final, and its spend."""

    batch: str
    total: int
    states: dict[JobState, int]
    spend_usd: float

    @computed_field  # type: ignore[prop-decorator]
    @property
    def final(self) -> int:
        """How many of its jobs are final (succeeded, failed or skipped)."""
        return sum(n for s, n in self.states.items() if s.final)

    @property
    def done(self) -> bool:
        """Every job of the batch is final."""
        return bool(self.total) and self.final >= self.total


class LaneStatus(_ReadModel):
    """One lane: its queue depth (incl. running and deferred), the upstream calls it started
    in the last minute, and the age of its oldest ready job in seconds."""

    depth: int
    calls_last_minute: int
    oldest_age_s: float


class FleetStatus(_ReadModel):
    """The whole fleet: jobs per state, lanes, spend and budgets, per-minute series over the
    last hour, and flow control (`flow_control`: pause, circuit, cooldown, calls in flight, and
    each upstream)."""

    states: dict[JobState, int]  # only the states that have jobs
    lanes: dict[Lane, LaneStatus]
    spend: SpendSummary
    budgets: Budgets
    finished_per_minute: list[int]  # jobs that became final, oldest minute first
    depth_per_minute: list[int | None]  # queue depth sampled each minute (None: no sample)
    flow_control: FlowStatus = Field(exclude=True)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def queue_depth(self) -> int:
        return sum(lane.depth for lane in self.lanes.values())

    @model_serializer(mode="wrap")
    def _with_flow(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`flow_control` is dumped flat, as it always was: its summary (pause, cooldown,
        circuit, in flight, calls last minute) and `upstreams`, one entry per upstream."""
        return {**handler(self), **self.flow_control.as_dict()}

    @property
    def admissible(self) -> int:
        """Queued jobs (both lanes) that admission could let through now: what workers should
        be scaled on. 0 while the fleet is paused, in a 429 cooldown, with the circuit open
        or a total/daily budget spent; a half-open circuit admits one probe."""
        flow = self.flow_control
        if flow.pause or flow.cooldown_s > 0 or self.budgets.spent or flow.circuit == "open":
            return 0
        return min(self.queue_depth, 1) if flow.circuit == "half_open" else self.queue_depth


__all__ = [
    "BatchSummary",
    "Budgets",
    "FleetStatus",
    "LaneStatus",
    "SpendSummary",
]


class Fleet:
    """Fleet-wide flow control as an operator sees it: pause, resume, and its state (the
    fleet's and each upstream's, by name)."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._flow = FlowControl(redis, settings)

    async def pause(
        self, reason: PauseReason = "manual", detail: str = "", *, upstream: str = ""
    ) -> None:
        """Stop every upstream call fleet-wide (or on one upstream of the pool, by name); jobs
        wait, nothing fails. An unknown upstream name raises `UnknownUpstream`."""
        await self._flow.pause(reason, detail, upstream=upstream)

    async def resume(self, *, upstream: str = "") -> bool:
        """Lift the fleet's pause and every upstream's (or one upstream's). Returns whether one was in
        force."""
        return await self._flow.resume(upstream=upstream)

    async def pause_info(self) -> PauseInfo | None:
        """Why nothing can start (the fleet paused, or every upstream paused), or None."""
        return await self._flow.pause_info()

    async def status(self) -> FlowStatus:
        """The fleet's pause and every upstream's state (`FlowStatus.upstreams`)."""
        return await self._flow.status()
