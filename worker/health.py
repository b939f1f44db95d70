"""Health: the checks behind `upscale health` and the worker's /healthz and /readyz.

Liveness (/healthz) is the process's event loop answering. Readiness (/readyz) is Redis and S3
reachable, and Redis taking this worker's writes (a full or read-only Redis answers PING): a
worker that cannot use them should get no traffic (and a rollout should wait).
The upstream key, and the model's published request shape on the gateway, are checked by
`upscale health` with requests that are never billed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis

from worker.redis_conn import last_away
from worker.runtime import Runtime
from worker.storage import Storage, StorageError
from worker.upstream.base import Upstream
from worker.upstream.gateway import GatewayUpstream

log = structlog.get_logger("worker.health")


Check = tuple[bool, str]
Explain = Callable[[BaseException], str]
CHECK_TIMEOUT_S = 3.0


def _plain(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


async def check_redis(redis: Redis, explain: Explain = _plain) -> Check:
    try:
        await asyncio.wait_for(redis.ping(), 3)
        return True, "ok"
    except Exception as e:
        return False, explain(e)


async def check_s3(storage: Storage, bucket: str | None, explain: Explain = _plain) -> Check:
    try:
        if bucket:
            await storage.head_bucket(bucket)
            return True, f"bucket {bucket} reachable"
        await storage.reachable()
        return True, "endpoint reachable"
    except StorageError as e:
        return False, explain(e)


async def check_upstream(upstream: Upstream) -> Check:
    # The adapter's HTTP client should time out first (with a message naming the URL).
    try:
        verdict = await asyncio.wait_for(upstream.check_key(), CHECK_TIMEOUT_S + 0.5)
    except TimeoutError:
        return False, f"the upstream did not answer within {CHECK_TIMEOUT_S:.0f} s"
    return verdict.ok, verdict.detail


async def check_schema(upstream: Upstream) -> Check | None:
    """The gateway model's published request shape against the image settings (free); None
    on a route that publishes none."""
    if not isinstance(upstream, GatewayUpstream):
        return None
    try:
        verdict = await asyncio.wait_for(upstream.check_schema(), CHECK_TIMEOUT_S + 0.5)
    except TimeoutError:
        return False, f"the model's schema did not come within {CHECK_TIMEOUT_S:.0f} s"
    return verdict.ok, verdict.detail


async def check_upstream_and_schema(upstream: Upstream) -> dict[str, Check]:
    """The key, then (once it is accepted) the model's schema: `upstream`, `schema`."""
    found = {"upstream": await check_upstream(upstream)}
    if found["upstream"][0] and (schema := await check_schema(upstream)) is not None:
        found["schema"] = schema
    return found


async def run_checks(
    rt: Runtime, *, upstream: bool = True, explain: Explain = _plain
) -> dict[str, Check]:
    checks: dict[str, Any] = {
        "redis": check_redis(rt.redis, explain),
        "s3": check_s3(rt.storage, rt.settings.ops.health_bucket, explain),
    }
    if upstream:
        for name, up in rt.upstreams.items():
            label = "upstream" if len(rt.upstreams) == 1 else f"upstream {name}"
            checks[label] = check_upstream(up)
    results = await asyncio.gather(*checks.values())
    return dict(zip(checks, results, strict=True))


def health_app(rt: Runtime) -> web.Application:
    started = time.time()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True, "uptime_s": round(time.time() - started)})

    async def readyz(_: web.Request) -> web.Response:
        results = await run_checks(rt, upstream=False)
        if results["redis"][0] and not rt.redis_ok:  # the worker's own writes are refused
            results["redis"] = (False, f"redis does not take writes yet ({last_away() or 'away'})")
        # a draining worker takes no new work: send traffic (and rollouts) elsewhere
        results["picking"] = (not rt.draining, "draining" if rt.draining else "ok")
        ok = all(r[0] for r in results.values())
        body = {name: {"ok": r[0], "detail": r[1]} for name, r in results.items()}
        return web.json_response({"ok": ok, "checks": body}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve_health(rt: Runtime, port: int) -> web.AppRunner:
    runner = web.AppRunner(health_app(rt), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    log.info("metrics and health listening", port=port)
    return runner
