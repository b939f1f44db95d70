"""What the webhook and the dashboard share: the bearer-token check, the error middleware, and
running an aiohttp app built around a Producer until the process is stopped. Both bind loopback
by default (`upscale webhook|dashboard --host`); binding wider with no token is logged."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import signal
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from producers.api import Producer
from worker.api import Settings, connect

log = structlog.get_logger("producers.serving")


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps a server to this machine (the default of both servers)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def bearer_matches(authorization: str, token: str) -> bool:
    """Whether an `Authorization` header value is `Bearer <token>`: the scheme in any case
    (RFC 9110 makes it case-insensitive), the token compared in constant time. An empty
    `token` (none configured) matches nothing."""
    scheme, _, given = authorization.strip().partition(" ")
    if not token or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """An unexpected error: logged with its traceback, answered as JSON (never a bare 500)."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except RedisError as e:
        log.warning("Redis unavailable", method=request.method, path=request.path, error=str(e))
        return web.json_response({"error": "Redis unavailable; try again"}, status=503)
    except Exception:
        log.exception("request failed", method=request.method, path=request.path)
        return web.json_response({"error": "internal error (logged)"}, status=500)


async def serve_app(
    name: str,
    factory: Callable[[Producer], web.Application],
    settings: Settings,
    host: str,
    port: int,
) -> None:
    redis = await connect(settings.redis, fail_fast=True)  # no Redis at start-up: say so and exit
    runner = web.AppRunner(factory(Producer(redis, settings)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info(f"{name} listening", url=f"http://{host}:{port}")
    if not is_loopback(host) and not settings.producers.api_token.get_secret_value():
        log.warning(
            f"{name} is exposed beyond this host with no UPSCALE_API_TOKEN",
            host=host,
            effect="reads are open to anyone who can reach it"
            if name == "dashboard"
            else "every endpoint but /healthz answers 503",
        )
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
