"""Ideogram's asynchronous generations: a `POST /upscale` with `async` or a `webhook_url` is
answered at once with a `generation_id`; the work then runs on its own (counted in flight, its
images in the organisation's cap) and is billed when it completes, or given back when it
fails. `GET /v2/generations/{id}` and `GET /v1/generations/{id}` read it: `pending` (or, by
config, `running`), `failed` with `failure_reason`, or `completed` with `response_type`,
`data` and `usage_cost_usd_micros`. Polls are rate limited per organisation (429 with
Retry-After). A webhook is recorded, not delivered."""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import time
from collections import deque
from typing import Any

from aiohttp import web

from infra.simulator import accounts, billing, clock, faults, wire, work
from infra.simulator.calls import Call
from infra.simulator.protocol import IDEOGRAM, STATE, ApiError, api_key, read_endpoint
from infra.simulator.records import Generation, Hold
from infra.simulator.results import image_item
from infra.simulator.state import SimState


def submit(
    request: web.Request,
    state: SimState,
    call: Call,
    held: Hold,
    account: accounts.Account,
    tag: str,
    image_sha: str,
) -> dict[str, Any]:
    """Start the generation (it owns `held` and its images in progress) and say its id."""
    gen = Generation(
        id=secrets.token_urlsafe(16),
        key=call.key,
        org=account.org,
        created=state.now(),
        n=call.n,
        knobs=call.knobs or {},
        tag=tag,
        webhook_url=call.webhook_url,
    )
    state.generations[gen.id] = gen
    base = f"{request.scheme}://{request.host}"
    task = asyncio.create_task(_run(state, gen, call.image, held, base, request.path, image_sha))
    state.tasks.add(task)
    task.add_done_callback(state.tasks.discard)
    created = clock.iso(gen.created)
    return {"created": created, wire.GENERATION_ID: gen.id, wire.REQUEST_ID: gen.id}


async def _run(
    state: SimState,
    gen: Generation,
    image: bytes,
    held: Hold,
    base: str,
    endpoint: str,
    image_sha: str,
) -> None:
    epoch = state.epoch
    try:
        async with work.in_flight(state, gen.key):
            await work.latency(state)
            out, size_in, size_out = await work.upscale(image, gen.knobs.get("detail"))
        if faults.take_async_failure(state.config):
            raise ApiError(500, "generation failed")
        unsafe = random.random() < state.config.unsafe_rate
        url = "" if unsafe else base + state.signed_path(state.store(out))
        item = {wire.OBJECT_TYPE: "image", **image_item(url, gen.knobs, size_in, size_out, unsafe)}
        gen.data = [item] * gen.n
        billing.charge(
            state, held, route=IDEOGRAM, endpoint=endpoint, tag=gen.tag, image_sha=image_sha
        )
        gen.cost_usd, gen.status = held.usd, "completed"
    except ApiError as err:  # a failed generation is not billed
        gen.status, gen.failure_reason = "failed", err.message
    finally:
        if state.epoch == epoch:  # a reset cancels the work and clears what it counted
            billing.release(state, held)
            work.free_images(state, gen.org, gen.n)


def view(state: SimState, gen: Generation) -> dict[str, Any]:
    """The poll answer: only id, status and created until it completes (as documented)."""
    body: dict[str, Any] = {wire.GENERATION_ID: gen.id, "created": clock.iso(gen.created)}
    if gen.status == "pending":
        return {**body, "status": state.config.ideogram_pending_status}
    if gen.status == "failed":
        return {**body, "status": wire.STATUS_FAILED, wire.FAILURE_REASON: gen.failure_reason}
    return {
        **body,
        "status": wire.STATUS_COMPLETED,
        wire.RESPONSE_TYPE: "image",
        "data": gen.data,
        wire.USAGE_COST: round(gen.cost_usd * 1_000_000),
    }


def _poll_admit(state: SimState, org: str) -> float | None:
    """None if this poll is admitted, else the seconds to wait (a per-organisation window)."""
    cfg = state.config
    now = time.monotonic()
    w = state.poll_windows.setdefault(org, deque())
    while w and w[0] <= now - cfg.ideogram_poll_window_s:
        w.popleft()
    if len(w) >= cfg.ideogram_poll_limit:
        return w[len(w) - cfg.ideogram_poll_limit] + cfg.ideogram_poll_window_s - now
    w.append(now)
    return None


@read_endpoint(IDEOGRAM, polled=True)
async def poll(request: web.Request) -> web.Response:
    state = request.app[STATE]
    key = api_key(request, IDEOGRAM)
    if key not in state.config.api_keys:
        raise ApiError(401, "invalid or missing API key")
    account = accounts.of(state.config, key)
    wait = _poll_admit(state, account.org)
    if wait is not None:
        retry = str(max(1, math.ceil(wait)))
        raise ApiError(429, "polling rate limit exceeded", headers={"Retry-After": retry})
    gen = state.generations.get(request.match_info["id"])
    if gen is None or gen.org != account.org:
        raise ApiError(404, "generation not found")
    return web.json_response(view(state, gen))
