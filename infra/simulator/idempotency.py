"""`Idempotency-Key` honoured (`honour_idempotency`): a repeated key waits for the first request
with it, then gets its answer again, not billed, marked `Idempotent-Replayed: true`."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from infra.simulator.state import SimState


async def replay(state: SimState, replay_key: str) -> web.Response | None:
    """The remembered answer for `replay_key`, once the first request with it has finished."""
    while replay_key in state.answering:  # the first request with this key still runs
        await state.answering[replay_key].wait()
    if replay_key in state.answers:
        status, body, headers = state.answers[replay_key]
        return web.Response(
            body=body,
            status=status,
            content_type="application/json",
            headers={**headers, "Idempotent-Replayed": "true"},
        )
    return None


def begin(state: SimState, replay_key: str) -> asyncio.Event:
    """Mark `replay_key` in progress: requests repeating it wait for `finish`."""
    done = state.answering[replay_key] = asyncio.Event()
    return done


def finish(state: SimState, replay_key: str, done: asyncio.Event) -> None:
    state.answering.pop(replay_key, None)
    done.set()


def answer(
    state: SimState,
    replay_key: str,
    status: int,
    body: dict[str, Any],
    rid: str,
    rate_headers: dict[str, str],
) -> web.Response:
    """A successful answer, remembered under its idempotency key when that is honoured."""
    raw = json.dumps(body).encode()
    headers = {"X-Request-Id": rid, **rate_headers}
    if replay_key:
        state.answers[replay_key] = (status, raw, headers)
    return web.Response(body=raw, status=status, content_type="application/json", headers=headers)
