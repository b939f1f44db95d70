"""The gateway simulator's HTTP app: Route 1 (OpenAI-compatible, `gateway.py`), Route 2
(Ideogram direct, `ideogram.py`), async jobs, result downloads, and the admin API (`admin.py`)."""

from __future__ import annotations

from aiohttp import web

from infra.simulator import admin
from infra.simulator.async_jobs import poll_job
from infra.simulator.config import SimConfig
from infra.simulator.gateway import edits, generations, list_models
from infra.simulator.ideogram import ideogram
from infra.simulator.protocol import STATE
from infra.simulator.results import download
from infra.simulator.state import SimState


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
    admin.add_routes(r)
    return app
