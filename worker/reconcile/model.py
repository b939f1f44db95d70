"""What `upscale reconcile` found: our ledger beside the upstream's books, per day and (on the
gateway, whose books are kept per `x-aig-tag` = batch) per batch. Stored in Redis
(`Keys.reconcile_last`) for the status page and `/metrics`."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, computed_field
from redis.asyncio import Redis

from worker.contract import micros_to_usd
from worker.keys import Keys
from worker.settings import Route

ALL_BATCHES = "*"  # a row of a route whose books have no tags (Ideogram): every batch


class Row(BaseModel):
    """One day (and batch) of one route: what we counted, what the upstream billed."""

    model_config = ConfigDict(frozen=True)

    route: Route
    day: str  # YYYY-MM-DD, UTC
    batch: str  # '' untagged (no batch), ALL_BATCHES where the books have no tags
    ledger_micros: int
    upstream_micros: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ledger_usd(self) -> float:
        return micros_to_usd(self.ledger_micros)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def upstream_usd(self) -> float:
        return micros_to_usd(self.upstream_micros)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def diff_usd(self) -> float:
        """The upstream's books minus ours: > 0, billed more than we counted."""
        return micros_to_usd(self.upstream_micros - self.ledger_micros)

    @property
    def where(self) -> str:
        """The day and batch, as a person names them."""
        batch = {"": "no batch", ALL_BATCHES: "all batches"}.get(self.batch, f"batch {self.batch}")
        return f"{self.day} {batch} ({self.route})"


class Reconciliation(BaseModel):
    """The rows from `since` to `until` (one batch's, with `batch`), and which are over the
    threshold."""

    at: float  # unix time it was made
    since: str
    until: str
    batch: str | None = None
    threshold_usd: float
    rows: list[Row]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ledger_usd(self) -> float:
        return micros_to_usd(sum(r.ledger_micros for r in self.rows))

    @computed_field  # type: ignore[prop-decorator]
    @property
    def upstream_usd(self) -> float:
        return micros_to_usd(sum(r.upstream_micros for r in self.rows))

    @computed_field  # type: ignore[prop-decorator]
    @property
    def drift_usd(self) -> float:
        """The upstream's books minus ours over every row (signed)."""
        return micros_to_usd(sum(r.upstream_micros - r.ledger_micros for r in self.rows))

    @computed_field  # type: ignore[prop-decorator]
    @property
    def over(self) -> list[Row]:
        """The rows whose difference is over the threshold (either way)."""
        return [r for r in self.rows if abs(r.diff_usd) > self.threshold_usd + 1e-9]

    def drift_by_route(self) -> dict[str, float]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.route] = out.get(r.route, 0) + r.upstream_micros - r.ledger_micros
        return {k: micros_to_usd(v) for k, v in out.items()}


async def save_last(redis: Redis, rec: Reconciliation) -> None:
    await redis.set(Keys.reconcile_last, rec.model_dump_json())


async def last_reconciliation(redis: Redis) -> Reconciliation | None:
    """The last `upscale reconcile` (None: never run, or unreadable after an upgrade)."""
    raw = await redis.get(Keys.reconcile_last)
    if raw is None:
        return None
    data: dict[str, Any] = json.loads(raw)
    for computed in ("ledger_usd", "upstream_usd", "drift_usd", "over"):
        data.pop(computed, None)
    for row in data.get("rows", []):
        for computed in ("ledger_usd", "upstream_usd", "diff_usd"):
            row.pop(computed, None)
    try:
        return Reconciliation.model_validate(data)
    except ValueError:
        return None
