"""The gateway simulator: speaks the upstream's routes (see shared UPSTREAM.md) over real HTTP,
really upscales 2x with Pillow, and fails like the real one. For tests, benchmarks and `make run`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from infra.simulator.admin import stats
from infra.simulator.app import create_app
from infra.simulator.config import SimConfig
from infra.simulator.protocol import STATE

__all__ = ["RunningSimulator", "SimConfig", "create_app", "run_simulator"]


@dataclass
class RunningSimulator:
    url: str
    port: int
    app: web.Application

    @property
    def config(self) -> SimConfig:
        return self.app[STATE].config

    def stats(self) -> dict[str, Any]:
        return stats(self.app[STATE])


@asynccontextmanager
async def run_simulator(
    config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningSimulator]:
    app = create_app(config)
    # A caller that goes away does not stop the work (as upstreams bill a timed-out call).
    runner = web.AppRunner(app, access_log=None, handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    try:
        yield RunningSimulator(url=f"http://{host}:{bound}", port=bound, app=app)
    finally:
        await runner.cleanup()
