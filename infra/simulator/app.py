"""The gateway simulator's HTTP app: Route 1 (OpenAI-compatible, `gateway.py`), Route 2
(Ideogram direct, `ideogram.py`), async jobs and generations, usage reports, the model
catalogue, result downloads, and the admin API (`admin.py`)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from infra.simulator import admin, async_jobs, catalog, generations, usage, wire
from infra.simulator.config import SimConfig
from infra.simulator.deprecation import deprecation
from infra.simulator.gateway import edits
from infra.simulator.gateway import generations as gateway_generations
from infra.simulator.ideogram import ideogram
from infra.simulator.protocol import STATE
from infra.simulator.results import download
from infra.simulator.state import SimState


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _stop_generations(app: web.Application) -> None:
    tasks = list(app[STATE].tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def create_app(config: SimConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[deprecation])
    app[STATE] = SimState(config or SimConfig())
    app.on_cleanup.append(_stop_generations)
    r = app.router
    r.add_post("/v1/images/generations", gateway_generations)
    r.add_post("/v1/images/edits", edits)
    r.add_get("/v1/jobs/{id}", async_jobs.poll_job)
    r.add_post(wire.JOB_CANCEL, async_jobs.cancel_job)
    r.add_get(wire.USAGE_BY_TAG, usage.by_tag)
    r.add_get("/v1/models", catalog.list_models)
    r.add_get("/v1/models/{id:.+}/schema", catalog.get_schema)  # before the catch-all below
    r.add_get("/v1/models/{id:.+}", catalog.get_model)
    r.add_post("/upscale", ideogram)
    r.add_get(wire.POLL_V2, generations.poll)
    r.add_get(wire.POLL_V1, generations.poll)
    r.add_get(wire.ACCOUNT_USAGE, usage.account_usage)
    r.add_get("/files/{file_id}", download)
    r.add_get("/healthz", healthz)
    admin.add_routes(r)
    return app
