"""The upstream at work: a call's or a generation's time in flight (counted in `inflight`),
held there while `hold_work` is on until `POST /_admin/release` lets it through, then the
latency draw and the real 2x upscale; and the images in progress per organisation that
Ideogram caps (429 `inflight_limit` with `max_inflight_requests`, before anything runs)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from infra.simulator import wire
from infra.simulator.accounts import Account
from infra.simulator.imaging import BadImage, upscale_2x
from infra.simulator.protocol import ApiError
from infra.simulator.state import SimState

Upscaled = tuple[bytes, tuple[int, int], tuple[int, int]]


def reserve_images(state: SimState, account: Account, n: int) -> None:
    """Count `n` images in progress for the organisation, or refuse the call: the cap is on
    images, across every key and endpoint of the organisation (a request for 4 takes 4)."""
    limit = account.inflight_limit
    if state.inflight_images[account.org] + n > limit:
        raise ApiError(
            429,
            "too many images in progress",
            extra={wire.REJECT_REASON: wire.INFLIGHT_LIMIT, wire.MAX_INFLIGHT: limit},
        )
    state.inflight_images[account.org] += n


def free_images(state: SimState, org: str, n: int) -> None:
    state.inflight_images[org] -= n


@asynccontextmanager
async def in_flight(state: SimState, key: str) -> AsyncIterator[None]:
    epoch = state.epoch
    state.inflight += 1
    state.inflight_by_key[key] += 1
    state.max_inflight = max(state.max_inflight, state.inflight)
    try:
        await _pass_gate(state)
        yield
    finally:
        if state.epoch == epoch:  # a reset zeroed the counters since
            state.inflight -= 1
            state.inflight_by_key[key] -= 1


async def _pass_gate(state: SimState) -> None:
    gate = state.gate
    gate.waiting += 1
    try:
        while state.config.hold_work:
            if gate.tokens > 0:
                gate.tokens -= 1
                return
            await gate.event.wait()
    finally:
        gate.waiting -= 1


async def latency(state: SimState) -> None:
    lo, hi = state.config.latency_ms
    if hi > 0:
        await asyncio.sleep(random.uniform(lo, hi) / 1000)


async def upscale(image: bytes, detail: object) -> Upscaled:
    """The real 2x upscale, off the event loop; a bad image is a 400 (`ApiError`)."""
    try:
        return await asyncio.to_thread(
            upscale_2x, image, detail if isinstance(detail, int) else None
        )
    except BadImage as e:
        raise ApiError(400, str(e)) from None
