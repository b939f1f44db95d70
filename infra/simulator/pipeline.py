"""The call path both routes share, in the upstream's order: key, idempotent replay, forced
faults, rate limits, parsing, model, Ideogram's images-in-progress cap, the price held within
the key's and organisation's limits, random faults, the upscale itself, then a 202 job, an
Ideogram generation id, or a billed answer. Every call is counted and logged, whatever its
outcome. A caller that goes away does not stop the work: the app never cancels a handler
(`handler_cancellation=False`), so the call completes and is billed."""

from __future__ import annotations

import hashlib
import random
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from infra.simulator import (
    accounts,
    async_jobs,
    billing,
    faults,
    generations,
    idempotency,
    ratelimit,
    work,
)
from infra.simulator.calls import Call
from infra.simulator.protocol import GATEWAY, IDEOGRAM, STATE, ApiError, api_key, error_response
from infra.simulator.records import Hold
from infra.simulator.results import result_body

Parse = Callable[[web.Request, str], Awaitable[Call]]


async def handle(request: web.Request, parse: Parse, route: int) -> web.Response:
    state = request.app[STATE]
    cfg = state.config
    state.calls += 1
    arrived = time.time()
    epoch = state.epoch
    rid = "req_" + secrets.token_hex(8)
    key = api_key(request, route)
    tag = request.headers.get("x-aig-tag", "")
    status = 500
    idem = request.headers.get("Idempotency-Key", "")
    image_sha = ""
    honour = cfg.ideogram_honour_idempotency if route == IDEOGRAM else cfg.honour_idempotency
    replay_key = f"{key}:{idem}" if idem and honour else ""
    done = None
    held: Hold | None = None
    account: accounts.Account | None = None
    images = 0  # images counted in progress for the organisation (the Ideogram cap)
    try:
        if key not in cfg.api_keys:
            raise ApiError(401, "invalid or missing API key")
        if replay_key:
            if (replayed := await idempotency.replay(state, replay_key)) is not None:
                status = replayed.status  # logged as the answer it repeats
                return replayed
            done = idempotency.begin(state, replay_key)
        if tag:
            state.by_tag[tag] += 1
        forced = faults.take_forced(cfg)
        if forced == 429:
            raise faults.forced_rate_limit(cfg, route)
        rate_headers = ratelimit.admit(state, key, route)
        if forced is not None:
            raise faults.forced_failure(forced, route)
        call = await parse(request, key)
        image_sha = hashlib.sha256(call.image).hexdigest()[:16]
        if call.model not in cfg.models:
            raise ApiError(404, f"unknown model {call.model!r}")
        account = accounts.of(cfg, key)
        if route == IDEOGRAM:
            work.reserve_images(state, account, call.n)
            images = call.n
        held = billing.hold(state, account, call.n, route, call.model)
        faults.roll_server_error(cfg)
        if call.is_async:  # Ideogram: the generation runs after this answer, and owns its hold
            body = generations.submit(request, state, call, held, account, tag, image_sha)
            held, images, status = None, 0, 200
            answer = idempotency.answer(state, replay_key, 200, body, rid, rate_headers)
            if faults.disconnect_after_work(cfg, request):  # it runs and bills; no id comes back
                status = 0
            return answer
        is_async = cfg.async_mode and route == GATEWAY
        async with work.in_flight(state, key):
            if not is_async:  # async: 202 now, ready after the latency
                await work.latency(state)
            out, size_in, size_out = await work.upscale(
                call.image, (call.knobs or {}).get("detail")
            )
        if is_async:
            job = async_jobs.accept(state, request.path, out, held, image_sha, idem, tag)
            held, status = None, 202  # billed when the job completes
            return idempotency.answer(
                state, replay_key, 202, async_jobs.accepted(job), rid, rate_headers
            )
        unsafe = random.random() < cfg.unsafe_rate
        # completed requests are billed, even when withheld as unsafe
        billing.charge(
            state, held, route=route, endpoint=request.path, tag=tag, image_sha=image_sha, idem=idem
        )
        held, status = None, 200
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
        return error_response(state, err, route)
    finally:
        if state.epoch == epoch:  # a reset in the meantime cleared what this call counted
            billing.release(state, held)
            if images and account is not None:
                work.free_images(state, account.org, images)
        if done is not None:
            idempotency.finish(state, replay_key, done)
        state.record(
            request.path,
            status,
            key,
            arrived,
            tag,
            image_sha=image_sha,
            idem=idem,
            client_gone=status != 0 and _client_gone(request),
        )


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
