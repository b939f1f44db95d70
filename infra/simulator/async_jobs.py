"""Async mode (`async_mode`, gateway route): a call is answered 202 with a job id at once and is
ready after the configured latency; `GET /v1/jobs/{id}` polls it (304 when polled faster than
`async_min_poll_s`). The job is billed when it completes, polled or not."""

from __future__ import annotations

import random
import secrets
import time

from aiohttp import web

from infra.simulator.protocol import GATEWAY, STATE, ApiError, api_key, error_response
from infra.simulator.state import AsyncJob, SimState


def accept(state: SimState, out: bytes, image_sha: str, idem: str, key: str) -> AsyncJob:
    """A new job holding the finished result `out`, ready after a latency draw."""
    job = AsyncJob(
        id="job_" + secrets.token_hex(8),
        ready_at=time.monotonic() + random.uniform(*state.config.latency_ms) / 1000,
    )
    job.file_id = state.store(out)
    job.image_sha, job.idem, job.key = image_sha, idem, key
    state.jobs[job.id] = job
    return job


async def poll_job(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if api_key(request, GATEWAY) not in state.config.api_keys:
        return error_response(state, ApiError(401, "invalid or missing API key"))
    job = state.jobs.get(request.match_info["id"])
    if job is None:
        return error_response(state, ApiError(404, "unknown job"))
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
