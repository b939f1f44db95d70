"""`upscale dashboard`: a status page, its JSON endpoints, and the fleet's Prometheus gauges.

    GET  /                 the page (`static/dashboard.html`: plain HTML + inline JS, no build chain)
    GET  /api/status       fleet: states, lanes, pause, circuit, cooldown, spend, budgets, throughput
    GET  /api/failures     latest failures with their reasons
    GET  /api/batches      per-batch progress and spend
    POST /api/resume       lift a pause                      (token)
    POST /api/retry/{job}  re-enqueue a failed job           (token)
    GET  /metrics          fleet gauges (one place, so N workers do not report N copies)
    GET  /healthz

Reading is open (put it behind your network policy); every POST needs
`Authorization: Bearer $UPSCALE_API_TOKEN`. The page takes the token once from `?token=` and
keeps it in the tab's sessionStorage; without one it is read-only.
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
from worker.api import Settings, fleet_metrics

log = structlog.get_logger("producers.dashboard")
PRODUCER: web.AppKey[Producer] = web.AppKey("producer", Producer)
MAX_FAILURES = 1000


@web.middleware
async def writes_need_token(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.method in ("GET", "HEAD"):
        return await handler(request)
    token = request.app[PRODUCER].settings.producers.api_token.get_secret_value()
    if not bearer_matches(request.headers.get("Authorization", ""), token):
        return web.json_response({"error": "read-only: a valid bearer token is needed"}, status=401)
    return await handler(request)


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


async def metrics(request: web.Request) -> web.Response:
    body = fleet_metrics(await request.app[PRODUCER].fleet_status())
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
    app = web.Application(middlewares=[errors_middleware, writes_need_token])
    app[PRODUCER] = producer
    app.router.add_get("/", page)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/failures", failures)
    app.router.add_get("/api/batches", batches)
    app.router.add_post("/api/resume", resume)
    app.router.add_post("/api/retry/{job_id}", retry)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(settings: Settings, host: str, port: int) -> None:
    await serve_app("dashboard", create_app, settings, host, port)
