"""The gateway simulator's HTTP routes: Route 1 (OpenAI-compatible), Route 2 (Ideogram direct),
result downloads, and an admin API (no auth: a loopback test tool)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from aiohttp import web

from infra.simulator.config import SimConfig
from infra.simulator.imaging import BadImage, upscale_2x
from infra.simulator.state import AsyncJob, SimState, sign

STATE: web.AppKey[SimState] = web.AppKey("state", SimState)
KNOBS = ("resemblance", "detail", "seed", "magic_prompt_option", "prompt")
ERROR_TYPES = {
    400: "invalid_request", 401: "authentication_error", 402: "insufficient_credits",
    403: "scope_exceeded", 404: "not_found", 413: "payload_too_large", 422: "safety_check_failed",
    429: "rate_limit_error", 500: "server_error", 503: "service_unavailable",
}  # fmt: skip


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.headers = headers or {}
        self.extra = extra or {}


def _error_response(state: SimState, err: ApiError) -> web.Response:
    kind = ERROR_TYPES.get(err.status, "error")
    if state.config.error_body_style == "string":
        body: dict[str, Any] = {"error": err.message}
    else:
        body = {"error": {"type": kind, "message": err.message, "code": kind}}
    body.update(err.extra)
    return web.json_response(body, status=err.status, headers=err.headers)


@dataclass
class Call:
    key: str
    route: int  # 1 gateway, 2 ideogram
    n: int = 1
    model: str = "ideogram/ideogram-upscale"
    image: bytes = b""
    response_format: str = "url"
    knobs: dict[str, Any] | None = None


# -- the shared call path ---------------------------------------------------------------------
async def _handle(
    request: web.Request, parse: Callable[[web.Request, str], Awaitable[Call]], route: int
) -> web.Response:
    state = request.app[STATE]
    cfg = state.config
    state.calls += 1
    arrived = time.time()
    held = 0
    rid = "req_" + secrets.token_hex(8)
    key = _key(request, route)
    status = 500
    idem = request.headers.get("Idempotency-Key", "")
    image_sha = ""
    replay_key = f"{key}:{idem}" if idem and cfg.honour_idempotency else ""
    done: asyncio.Event | None = None
    try:
        if key not in cfg.api_keys:
            raise ApiError(401, "invalid or missing API key")
        if replay_key:
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
            done = state.answering[replay_key] = asyncio.Event()
        if tag := request.headers.get("x-aig-tag"):
            state.by_tag[tag] += 1
        forced = cfg.fail_next.pop(0) if cfg.fail_next else None
        if forced == 429:
            raise ApiError(
                429,
                "rate limit exceeded",
                headers={"Retry-After": str(cfg.fail_next_retry_after)},
                extra=_reject(route, "rate_limit"),
            )
        allowed, retry_after, limit, remaining = state.rate_check(key)
        rate_headers = {
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": f"{max(1, round(state.reset_in(key)))}s",
        }
        if not allowed:
            raise ApiError(
                429,
                "rate limit exceeded",
                headers={"Retry-After": str(max(1, int(retry_after + 0.999))), **rate_headers},
                extra=_reject(route, "rate_limit"),
            )
        if route == 2 and state.inflight_by_key[key] >= cfg.ideogram_inflight_limit:
            raise ApiError(
                429, "too many images in progress", extra={"reject_reason": "inflight_limit"}
            )
        if forced is not None:
            raise ApiError(
                forced,
                f"forced failure {forced}",
                extra=_reject(route, "insufficient_funds") if forced == 402 else {},
            )
        call = await parse(request, key)
        image_sha = hashlib.sha256(call.image).hexdigest()[:16]
        if call.model not in cfg.models:
            raise ApiError(404, f"unknown model {call.model!r}")
        if not state.hold(call.n, key):
            raise ApiError(
                402,
                "insufficient credits: top up your wallet",
                extra=_reject(route, "insufficient_funds"),
            )
        held = call.n
        roll = random.random()
        if roll < cfg.fault_500_rate:
            raise ApiError(500, "internal error")
        if roll < cfg.fault_500_rate + cfg.fault_503_rate:
            raise ApiError(503, "upstream saturated, retry later")
        async with _inflight(state, key):
            lo, hi = cfg.latency_ms
            if hi > 0 and not (cfg.async_mode and route == 1):  # async: 202 now, ready later
                await asyncio.sleep(random.uniform(lo, hi) / 1000)
            try:
                out, size_in, size_out = await asyncio.to_thread(
                    upscale_2x, call.image, (call.knobs or {}).get("detail")
                )
            except BadImage as e:
                raise ApiError(400, str(e)) from None
        if cfg.async_mode and route == 1:
            job = AsyncJob(
                id="job_" + secrets.token_hex(8),
                ready_at=time.monotonic() + random.uniform(*cfg.latency_ms) / 1000,
            )
            job.file_id = state.store(out)
            job.image_sha, job.idem, job.key = image_sha, idem, key
            state.jobs[job.id] = job
            held = 0  # billed when the job completes
            status = 202
            return _answer(
                state, replay_key, 202, {"id": job.id, "status": "queued"}, rid, rate_headers
            )
        unsafe = random.random() < cfg.unsafe_rate
        # completed requests are billed, even when withheld as unsafe
        state.bill(call.n, image_sha, idem, key)
        held = 0
        status = 200
        answer = _answer(
            state,
            replay_key,
            200,
            _result(request, state, call, out, size_in, size_out, unsafe),
            rid,
            rate_headers,
        )
        if cfg.disconnect_next > 0:
            # A reset after the work is done: the caller never learns it was billed.
            cfg.disconnect_next -= 1
            status = 0
            if request.transport is not None:
                request.transport.close()
        return answer
    except ApiError as err:
        status = err.status
        err.headers["X-Request-Id"] = rid
        return _error_response(state, err)
    finally:
        if held:
            state.release(held, key)
        if done is not None:
            state.answering.pop(replay_key, None)
            done.set()
        state.record(
            request.path,
            status,
            key,
            arrived,
            request.headers.get("x-aig-tag", ""),
            image_sha=image_sha,
            idem=idem,
        )


def _answer(
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


def _reject(route: int, reason: str) -> dict[str, Any]:
    return {"reject_reason": reason} if route == 2 else {}


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


def _result(
    request: web.Request,
    state: SimState,
    call: Call,
    out: bytes,
    size_in: tuple[int, int],
    size_out: tuple[int, int],
    unsafe: bool,
) -> dict[str, Any]:
    base = f"{request.scheme}://{request.host}"
    if call.route == 2:
        knobs = call.knobs or {}
        url = "" if unsafe else base + state.signed_path(state.store(out))
        item = {
            "url": url,
            "resolution": f"{size_in[0]}x{size_in[1]}",
            "upscaled_resolution": f"{size_out[0]}x{size_out[1]}",
            "seed": knobs.get("seed", random.randint(0, 2**31 - 1)),
            "prompt": knobs.get("prompt", ""),
            "is_image_safe": not unsafe,
        }
        return {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "data": [item] * call.n,
        }
    if call.response_format == "b64_json":
        data = [{"b64_json": base64.b64encode(out).decode()}] * call.n
    else:
        data = [{"url": base + state.signed_path(state.store(out))} for _ in range(call.n)]
    return {"created": int(time.time()), "data": data}


def _key(request: web.Request, route: int) -> str:
    if route == 2:
        return request.headers.get("Api-Key", "")
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


# -- request parsing -----------------------------------------------------------------------------
def _validate_knobs(knobs: dict[str, Any]) -> dict[str, Any]:
    for name in ("resemblance", "detail"):
        if name in knobs and not (isinstance(knobs[name], int) and 1 <= knobs[name] <= 100):
            raise ApiError(400, f"{name} must be an integer 1-100")
    if "seed" in knobs and not (
        isinstance(knobs["seed"], int) and 0 <= knobs["seed"] <= 2_147_483_647
    ):
        raise ApiError(400, "seed must be an integer 0-2147483647")
    if "magic_prompt_option" in knobs and knobs["magic_prompt_option"] not in ("AUTO", "ON", "OFF"):
        raise ApiError(400, "magic_prompt_option must be AUTO, ON or OFF")
    return knobs


def _n(value: Any) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ApiError(400, "n must be an integer 1-8") from None
    if not 1 <= n <= 8:
        raise ApiError(400, "n must be an integer 1-8")
    return n


async def _fetch_image(ref: str, limit: int) -> bytes:
    if ref.startswith("data:"):
        header, _, payload = ref.partition(",")
        if ";base64" not in header:
            raise ApiError(400, "data URL must be base64")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "data URL is not valid base64") from None
    elif ref.startswith(("http://", "https://")):
        try:
            async with httpx.AsyncClient(timeout=20) as client:
                resp = await client.get(ref)
        except httpx.HTTPError as e:
            raise ApiError(400, f"could not fetch image URL: {type(e).__name__}") from None
        if resp.status_code != 200:
            raise ApiError(400, f"could not fetch image URL: HTTP {resp.status_code}")
        data = resp.content
    else:
        raise ApiError(400, "image must be an http(s) URL or a data URL")
    if len(data) > limit:
        raise ApiError(400, f"image is larger than {limit} bytes")
    return data


async def parse_generations(request: web.Request, key: str) -> Call:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "body must be JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    ref = body.get("image") or body.get("image_url") or body.get("reference_image")
    if not isinstance(ref, str):
        raise ApiError(400, "missing reference image (image / image_url / reference_image)")
    fmt = body.get("response_format", "url")
    if fmt not in ("url", "b64_json"):
        raise ApiError(400, "response_format must be url or b64_json")
    knobs = _validate_knobs({k: body[k] for k in KNOBS if k in body})
    model = str(body.get("model", ""))
    if model not in request.app[STATE].config.models:
        raise ApiError(404, f"unknown model {model!r}")
    image = await _fetch_image(ref, request.app[STATE].config.max_input_bytes)
    return Call(
        key=key,
        route=1,
        n=_n(body.get("n", 1)),
        model=model,
        image=image,
        response_format=fmt,
        knobs=knobs,
    )


async def parse_edits(request: web.Request, key: str) -> Call:
    form = await request.post()
    image = form.get("image")
    if not isinstance(image, web.FileField):
        raise ApiError(400, "multipart field 'image' (a file) is required")
    data = image.file.read()
    limit = request.app[STATE].config.max_input_bytes
    if len(data) > limit:
        raise ApiError(400, f"image is larger than {limit} bytes")
    knobs: dict[str, Any] = {}
    for k in KNOBS:
        if k in form:
            v = str(form[k])
            knobs[k] = (
                int(v) if k in ("resemblance", "detail", "seed") and v.lstrip("-").isdigit() else v
            )
    fmt = str(form.get("response_format", "url"))
    return Call(
        key=key,
        route=1,
        n=_n(form.get("n", 1)),
        model=str(form.get("model", "")),
        image=data,
        response_format=fmt,
        knobs=_validate_knobs(knobs),
    )


async def parse_ideogram(request: web.Request, key: str) -> Call:
    form = await request.post()
    image = form.get("image_file")
    if not isinstance(image, web.FileField):
        raise ApiError(400, "multipart field 'image_file' is required")
    data = image.file.read()
    if len(data) > request.app[STATE].config.max_input_bytes:
        raise ApiError(413, "image_file too large")
    try:
        knobs = json.loads(str(form.get("image_request", "{}")))
    except ValueError:
        raise ApiError(400, "image_request must be a JSON string") from None
    if not isinstance(knobs, dict):
        raise ApiError(400, "image_request must be a JSON object")
    return Call(
        key=key,
        route=2,
        model="ideogram/ideogram-upscale",
        image=data,
        knobs=_validate_knobs(knobs),
    )


# -- handlers ------------------------------------------------------------------------------------
async def generations(request: web.Request) -> web.Response:
    return await _handle(request, parse_generations, 1)


async def edits(request: web.Request) -> web.Response:
    return await _handle(request, parse_edits, 1)


async def ideogram(request: web.Request) -> web.Response:
    return await _handle(request, parse_ideogram, 2)


async def poll_job(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if _key(request, 1) not in state.config.api_keys:
        return _error_response(state, ApiError(401, "invalid or missing API key"))
    job = state.jobs.get(request.match_info["id"])
    if job is None:
        return _error_response(state, ApiError(404, "unknown job"))
    now = time.monotonic()
    if job.last_poll and now - job.last_poll < state.config.async_min_poll_s:
        return web.Response(status=304)
    job.last_poll = now
    if now < job.ready_at:
        return web.json_response({"id": job.id, "status": "processing"})
    if job.error:
        return web.json_response({"id": job.id, "status": "failed", "error": job.error})
    state.settle_async()  # billed at completion (held from the wallet when accepted)
    url = f"{request.scheme}://{request.host}" + state.signed_path(job.file_id or "")
    return web.json_response({"id": job.id, "status": "completed", "result": {"file_url": url}})


async def download(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    cfg = state.config
    file_id = request.match_info["file_id"]
    try:
        exp = int(request.query.get("exp", "0"))
    except ValueError:
        exp = 0
    if request.query.get("sig") != sign(file_id, exp):
        return web.Response(status=403, text="bad signature")
    if exp < time.time():
        return web.Response(status=403, text="link expired")
    data = state.files.get(file_id)
    if data is None:
        return web.Response(status=404, text="no such file")
    state.downloads += 1
    truncate = cfg.truncate_next_downloads > 0 or random.random() < cfg.truncate_download_rate
    if cfg.truncate_next_downloads > 0:
        cfg.truncate_next_downloads -= 1
    resp = web.StreamResponse(
        headers={"Content-Type": "image/png", "Content-Length": str(len(data))}
    )
    await resp.prepare(request)
    end = len(data) // 2 if truncate else len(data)
    chunk = 64 * 1024
    for i in range(0, end, chunk):
        await resp.write(data[i : min(i + chunk, end)])
        if cfg.download_delay_ms:
            await asyncio.sleep(cfg.download_delay_ms / 1000)
    if truncate:
        # Close mid-body: the client sees fewer bytes than Content-Length promised.
        if request.transport is not None:
            request.transport.close()
        return resp
    await resp.write_eof()
    return resp


async def list_models(request: web.Request) -> web.Response:
    """Like an OpenAI-compatible gateway: free, never billed, 401 for a bad key."""
    state = request.app[STATE]
    if _key(request, 1) not in state.config.api_keys:
        return _error_response(state, ApiError(401, "invalid or missing API key"))
    return web.json_response({"data": [{"id": m, "object": "model"} for m in state.config.models]})


async def admin_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats())


async def admin_reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.json_response({"ok": True})


async def admin_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    patch = await request.json()
    state.config = SimConfig.model_validate({**state.config.model_dump(), **patch})
    return web.json_response(state.config.model_dump())


async def admin_wallet(request: web.Request) -> web.Response:
    """`{"set": usd|null}` / `{"add": usd}`, for one key's own wallet with `"key"`."""
    state = request.app[STATE]
    body = await request.json()
    key = str(body.get("key", ""))
    if key and key not in state.config.wallets_usd:
        state.config.wallets_usd[key] = None
    if "set" in body:
        state.set_wallet(key, None if body["set"] is None else float(body["set"]))
    if "add" in body:
        state.set_wallet(key, round((state.wallet(key) or 0.0) + float(body["add"]), 6))
    return web.json_response({"wallet_usd": state.wallet(key)})


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def create_app(config: SimConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE] = SimState(config or SimConfig())
    r = app.router
    r.add_post("/v1/images/generations", generations)
    r.add_post("/v1/images/edits", edits)
    r.add_get("/v1/jobs/{id}", poll_job)
    r.add_post("/upscale", ideogram)
    r.add_get("/files/{file_id}", download)
    r.add_get("/healthz", healthz)
    r.add_get("/v1/models", list_models)
    r.add_get("/_admin/stats", admin_stats)
    r.add_post("/_admin/reset", admin_reset)
    r.add_post("/_admin/config", admin_config)
    r.add_post("/_admin/wallet", admin_wallet)
    return app
