"""The call path both routes share, in the upstream's order: key, idempotent replay, forced
faults, rate limits, parsing, model, wallet hold, random faults, the upscale itself, then a 202
job or a billed answer. Every call is counted and logged, whatever its outcome."""

from __future__ import annotations

import asyncio
import hashlib
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web

from infra.simulator import async_jobs, faults, idempotency, ratelimit, wallet
from infra.simulator.calls import Call
from infra.simulator.imaging import BadImage, upscale_2x
from infra.simulator.protocol import GATEWAY, STATE, ApiError, api_key, error_response
from infra.simulator.results import result_body
from infra.simulator.state import SimState

Parse = Callable[[web.Request, str], Awaitable[Call]]


async def handle(request: web.Request, parse: Parse, route: int) -> web.Response:
    state = request.app[STATE]
    cfg = state.config
    state.calls += 1
    arrived = time.time()
    held = 0
    rid = "req_" + secrets.token_hex(8)
    key = api_key(request, route)
    status = 500
    idem = request.headers.get("Idempotency-Key", "")
    image_sha = ""
    replay_key = f"{key}:{idem}" if idem and cfg.honour_idempotency else ""
    done: asyncio.Event | None = None
    try:
        if key not in cfg.api_keys:
            raise ApiError(401, "invalid or missing API key")
        if replay_key:
            if (replayed := await idempotency.replay(state, replay_key)) is not None:
                status = replayed.status  # logged as the answer it repeats
                return replayed
            done = idempotency.begin(state, replay_key)
        if tag := request.headers.get("x-aig-tag"):
            state.by_tag[tag] += 1
        forced = faults.take_forced(cfg)
        if forced == 429:
            raise faults.forced_rate_limit(cfg, route)
        rate_headers = ratelimit.admit(state, key, route, cfg.ideogram_inflight_limit)
        if forced is not None:
            raise faults.forced_failure(forced, route)
        call = await parse(request, key)
        image_sha = hashlib.sha256(call.image).hexdigest()[:16]
        if call.model not in cfg.models:
            raise ApiError(404, f"unknown model {call.model!r}")
        wallet.hold_or_refuse(state, call.n, key, route)
        held = call.n
        faults.roll_server_error(cfg)
        is_async = cfg.async_mode and route == GATEWAY
        async with _inflight(state, key):
            lo, hi = cfg.latency_ms
            if hi > 0 and not is_async:  # async: 202 now, ready later
                await asyncio.sleep(random.uniform(lo, hi) / 1000)
            try:
                out, size_in, size_out = await asyncio.to_thread(
                    upscale_2x, call.image, (call.knobs or {}).get("detail")
                )
            except BadImage as e:
                raise ApiError(400, str(e)) from None
        if is_async:
            job = async_jobs.accept(state, out, image_sha, idem, key)
            held = 0  # billed when the job completes
            status = 202
            return idempotency.answer(
                state, replay_key, 202, {"id": job.id, "status": "queued"}, rid, rate_headers
            )
        unsafe = random.random() < cfg.unsafe_rate
        # completed requests are billed, even when withheld as unsafe
        state.bill(call.n, image_sha, idem, key)
        held = 0
        status = 200
        answer = idempotency.answer(
            state,
            replay_key,
            200,
            result_body(request, state, call, out, size_in, size_out, unsafe),
            rid,
            rate_headers,
        )
        if faults.disconnect_after_work(cfg, request):
            status = 0
        return answer
    except ApiError as err:
        status = err.status
        err.headers["X-Request-Id"] = rid
        return error_response(state, err)
    finally:
        if held:
            wallet.release(state, held, key)
        if done is not None:
            idempotency.finish(state, replay_key, done)
        state.record(
            request.path,
            status,
            key,
            arrived,
            request.headers.get("x-aig-tag", ""),
            image_sha=image_sha,
            idem=idem,
        )


@asynccontextmanager
async def _inflight(state: SimState, key: str) -> AsyncIterator[None]:
    state.inflight += 1
    state.inflight_by_key[key] += 1
    state.max_inflight = max(state.max_inflight, state.inflight)
    try:
        yield
    finally:
        state.inflight -= 1
        state.inflight_by_key[key] -= 1
