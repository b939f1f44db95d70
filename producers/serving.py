"""Run an aiohttp app built around a Producer until the process is stopped."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import structlog
from aiohttp import web

from producers.api import Producer
from worker.redis_conn import connect
from worker.settings import Settings

log = structlog.get_logger("producers.serving")


async def serve_app(
    name: str,
    factory: Callable[[Producer], web.Application],
    settings: Settings,
    host: str,
    port: int,
) -> None:
    redis = await connect(settings)
    runner = web.AppRunner(factory(Producer(redis, settings)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info(f"{name} listening", url=f"http://{host}:{port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # a rollout: close cleanly, exit 0
    try:
        await stop.wait()
        log.info(f"{name} stopping")
    finally:
        await runner.cleanup()
        await redis.aclose()
