"""Admission: one atomic decision (`admit.lua`) over every control and every upstream of the
pool, and the gate (can anything be admitted now?). The slot it takes lives on in `slots.py`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NamedTuple, TypedDict

from worker.flow.base import FlowBase
from worker.flow.decisions import (
    Admitted,
    Denied,
    Gate,
    GateState,
    _today,
    cap,
)
from worker.flow.slots import new_token
from worker.keys import ADMISSION, PREFIX, Keys
from worker.ledger.reads import text
from worker.upstream.pool import PoolUpstream


class AdmitKeys(NamedTuple):
    """The fleet's KEYS of `admit.lua`, by name and in its order (its `FLEET_KEYS`); each
    upstream's follow (`upstream_keys`, its `UPSTREAM_KEYS`)."""

    pause: str
    reserved: str
    spend_total: str
    spend_day: str
    spend_batch: str
    reserved_total: str
    reserved_day: str
    reserved_batch: str
    batch: str
    live_waiting: str
    line: str
    line_seen: str


class UpstreamOption(TypedDict):
    """One upstream in `admit.lua`'s options (`o.upstreams[i]`)."""

    name: str
    max_inflight: int
    rpm: int
    burst_factor: float
    est: int
    cap: int
    group: str  # its in-flight group ('' none)
    group_cap: int


# `admit.lua`'s KEYS per upstream, by name (its `UPSTREAM_KEYS`): the upstream's own
# (`ADMISSION`), then its wallet's canary lock and where its in-flight cap's word is kept.
UPSTREAM_ADMIT_KEYS: tuple[str, ...] = (*ADMISSION, "canary_lock", "cap_word")


def upstream_keys(u: PoolUpstream) -> list[str]:
    """An upstream's KEYS of `admit.lua`, in `UPSTREAM_ADMIT_KEYS`' order."""
    return [*u.keys.admission(), u.canary_lock, u.cap_word]


class AdmitOptions(TypedDict):
    """`admit.lua`'s ARGV[2] (JSON): everything but the prefix, by name."""

    token: str
    lease_ms: int
    window_ms: int
    burst_window_ms: int
    canary_ms: int
    cap_total: int
    cap_day: int
    cap_batch: int
    poll_ms: int
    lane: str
    job_id: str
    bulk_floor: float
    margin_ms: int
    upstreams: list[UpstreamOption]


class Admission(FlowBase):
    async def admit(
        self,
        *,
        batch: str | None = None,
        images: int = 1,
        lane: str = "live",
        job_id: str = "",
        prefer: str = "",
    ) -> Admitted | Denied:
        """One slot on the first upstream of the pool with room now (`prefer` first: the one an
        unknown call went to, so it is asked again where its idempotency key means something)."""
        s = self.settings.flow
        token = new_token()
        day, b = _today(), batch or ""
        order = sorted(self.pool, key=lambda m: m.name != prefer) if prefer else self.pool
        fleet = AdmitKeys(
            pause=Keys.pause,
            reserved=Keys.budget_reserved,
            spend_total=Keys.spend_total,
            spend_day=Keys.spend_day(day),
            spend_batch=Keys.spend_batch(b),
            reserved_total=Keys.budget_reserved_total,
            reserved_day=Keys.budget_reserved_day(day),
            reserved_batch=Keys.budget_reserved_batch(b),
            batch=Keys.batch(b),
            live_waiting=Keys.live_waiting,
            line=Keys.waiting_line,
            line_seen=Keys.waiting_seen,
        )
        options = AdmitOptions(
            token=token,
            lease_ms=int(s.lease_s * 1000),
            window_ms=self._window_ms,
            burst_window_ms=int(s.rate_burst_window_s * 1000),
            canary_ms=int(s.canary_interval_s * 1000),
            cap_total=cap(s.budget_total_usd),
            cap_day=cap(s.budget_daily_usd),
            cap_batch=cap(s.budget_batch_usd, bool(batch)),  # plus the batch's own cap, if set
            poll_ms=int(s.pause_poll_s * 1000),
            lane=lane,
            job_id=job_id or token,
            bulk_floor=s.bulk_floor,
            margin_ms=int(s.rate_window_margin_s * 1000),
            upstreams=[
                UpstreamOption(
                    name=m.name,
                    max_inflight=m.flow.inflight_cap,
                    rpm=m.flow.rpm_ceiling,
                    burst_factor=m.flow.rate_burst_factor or 0,
                    est=m.price_micros * images,
                    cap=m.budget_micros,
                    group=m.inflight_group or "",
                    group_cap=m.group_cap,
                )
                for m in order
            ],
        )
        keys = [*fleet, *(k for m in order for k in upstream_keys(m))]
        reply = await self._admit(keys=keys, args=[PREFIX, json.dumps(options)])
        if int(reply[0]) == 1:
            name = text(reply[2])
            return Admitted(token=f"{name}/{token}", kind=text(reply[1]), upstream=name)  # type: ignore[arg-type]  # the script's values
        return Denied(reason=text(reply[1]), wait_s=int(reply[2]) / 1000)  # type: ignore[arg-type]  # the script's values

    async def release(self, token: str) -> None:
        """Give back an admitted slot that made no call (`Slots.release`)."""
        await self.slots.release(token)

    @asynccontextmanager
    async def hold(self, token: str) -> AsyncIterator[None]:
        """Keep an admitted slot's lease alive while its call runs (`Slots.hold`)."""
        async with self.slots.hold(token):
            yield

    async def gate(self) -> Gate:
        """Can any call be admitted now, on any upstream? (pause, cooldown, open circuit,
        budgets)"""
        s = self.settings.flow
        day = _today()
        keys = [
            Keys.pause,
            Keys.spend_total,
            Keys.spend_day(day),
            Keys.budget_reserved_total,
            Keys.budget_reserved_day(day),
        ]
        args: list[str | int] = [
            PREFIX,
            int(s.canary_interval_s * 1000),
            cap(s.budget_total_usd),
            cap(s.budget_daily_usd),
            int(s.pause_poll_s * 1000),
            len(self.pool),
        ]
        for m in self.pool:
            k = m.keys
            keys += [k.pause, m.canary_lock, k.cooldown, k.circuit, k.spend, k.reserved]
            args += [m.price_micros, m.budget_micros]
        reply = await self._gate(keys=keys, args=args)
        state: GateState = text(reply[0])  # type: ignore[assignment]  # the script's values
        if state != "closed":
            return Gate(state)
        return Gate(state, reason=text(reply[1]), wait_s=int(reply[2]) / 1000)
