"""`upscale dashboard`: a status page, its JSON endpoints, and the fleet's Prometheus gauges.

    GET  /                 the page (`static/dashboard.html`: plain HTML + inline JS, no build chain)
    GET  /api/status       fleet: states, lanes, pause, circuit, cooldown, spend, budgets, throughput
    GET  /api/failures     latest failures with their reasons
    GET  /api/batches      per-batch progress and spend
    GET  /api/reconcile    the last `upscale reconcile` (null: never run)
    POST /api/resume       lift a pause                      (token)
    POST /api/retry/{job}  re-enqueue a failed job           (token)
    GET  /metrics          fleet gauges (one place, so N workers do not report N copies)
    GET  /healthz

It listens on loopback unless told otherwise (`--host 0.0.0.0` / `UPSCALE_DASHBOARD_HOST`).
With `UPSCALE_API_TOKEN` set, everything but `/healthz` and `/metrics` (aggregate gauges, which
Prometheus scrapes like every worker's) needs it: the reads show job ids, keys, errors and spend.
Reads take `Authorization: Bearer <token>` or the page's cookie; every POST needs the header.
The page takes the token once from `?token=`: the server answers with an HttpOnly, SameSite=Strict
cookie (so the page's own reads carry it) and the page keeps it in the tab's sessionStorage for
its buttons. With no token configured the reads are open and nothing can be written.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from importlib.resources import files

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from producers.api import Producer
from producers.serving import bearer_matches, errors_middleware, serve_app
from worker.api import Settings, fleet_metrics, last_reconciliation, reconcile_metrics

log = structlog.get_logger("producers.dashboard")
PRODUCER: web.AppKey[Producer] = web.AppKey("producer", Producer)
MAX_FAILURES = 1000


COOKIE = "uq_token"
OPEN_PATHS = {"/healthz", "/metrics"}


def _token(request: web.Request) -> str:
    return request.app[PRODUCER].settings.producers.api_token.get_secret_value()


@web.middleware
async def token_required(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    token = _token(request)
    header = request.headers.get("Authorization", "")
    if request.method not in ("GET", "HEAD"):  # writes: the header only (no cross-site POST)
        if not bearer_matches(header, token):
            return web.json_response(
                {"error": "read-only: a valid bearer token is needed"}, status=401
            )
        return await handler(request)
    if not token or request.path in OPEN_PATHS:
        return await handler(request)
    given = request.query.get("token") if request.path == "/" else None
    if (
        bearer_matches(header, token)
        or bearer_matches(f"Bearer {request.cookies.get(COOKIE, '')}", token)
        or (given is not None and bearer_matches(f"Bearer {given}", token))
    ):
        response = await handler(request)
        if given is not None:  # the page's own reads carry it from now on
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
        return response
    if request.path == "/":
        return web.Response(
            status=401,
            text="upscale-queue dashboard: open it as /?token=<UPSCALE_API_TOKEN>\n",
        )
    return web.json_response(
        {"error": "a valid bearer token is needed (UPSCALE_API_TOKEN is set)"}, status=401
    )


async def status(request: web.Request) -> web.Response:
    fleet = await request.app[PRODUCER].fleet_status()
    return web.json_response(fleet.model_dump(mode="json"))


async def failures(request: web.Request) -> web.Response:
    raw = request.query.get("limit", "20")
    limit = int(raw) if raw.isdigit() else 0
    if not 1 <= limit <= MAX_FAILURES:
        return web.json_response(
            {"error": f"limit must be a whole number from 1 to {MAX_FAILURES}, not {raw!r}"},
            status=400,
        )
    recs = await request.app[PRODUCER].recent_failures(limit)
    shown = {"job_id", "source", "error_class", "error", "updated_at"}
    return web.json_response([r.model_dump(include=shown) for r in recs])


async def batches(request: web.Request) -> web.Response:
    recent = await request.app[PRODUCER].recent_batches()
    return web.json_response([b.model_dump(mode="json") for b in recent])


async def resume(request: web.Request) -> web.Response:
    lifted = await request.app[PRODUCER].resume()
    log.info("resumed from the dashboard", was_paused=lifted)
    return web.json_response({"resumed": lifted})


async def retry(request: web.Request) -> web.Response:
    r = await request.app[PRODUCER].retry(request.match_info["job_id"])
    if r is None:
        return web.json_response({"error": "no such job"}, status=404)
    return web.json_response({"job_id": r.job_id, "outcome": r.outcome})


async def reconciliation(request: web.Request) -> web.Response:
    last = await last_reconciliation(request.app[PRODUCER].redis)
    return web.json_response(None if last is None else last.model_dump(mode="json"))


async def metrics(request: web.Request) -> web.Response:
    producer = request.app[PRODUCER]
    body = fleet_metrics(await producer.fleet_status())
    body += reconcile_metrics(await last_reconciliation(producer.redis))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@cache
def page_html() -> str:
    """The page, package data (read once: it does not change while we run)."""
    return files("producers").joinpath("static/dashboard.html").read_text(encoding="utf-8")


async def page(_request: web.Request) -> web.Response:
    return web.Response(text=page_html(), content_type="text/html")


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def create_app(producer: Producer) -> web.Application:
    app = web.Application(middlewares=[errors_middleware, token_required])
    app[PRODUCER] = producer
    app.router.add_get("/", page)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/failures", failures)
    app.router.add_get("/api/batches", batches)
    app.router.add_get("/api/reconcile", reconciliation)
    app.router.add_post("/api/resume", resume)
    app.router.add_post("/api/retry/{job_id}", retry)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(settings: Settings, host: str, port: int) -> None:
    await serve_app("dashboard", create_app, settings, host, port)
