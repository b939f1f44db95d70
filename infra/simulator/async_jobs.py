"""Async mode (`async_mode`, gateway route): a call is answered 202 with a job id at once and is
ready after the configured latency; `GET /v1/jobs/{id}` polls it (304 when polled faster than
`async_min_poll_s`). The job is billed when it completes, polled or not; a failed or
cancelled job (`POST /v1/jobs/{id}/cancel`) costs nothing. Each read of a completed job signs
a fresh result link (valid `result_url_ttl_s`, 24 h) while the file is kept
(`file_retention_s`, 7 days); after that the job answers 404."""

from __future__ import annotations

import random
import secrets
import time
from typing import Any

from aiohttp import web

from infra.simulator import billing, faults, wire
from infra.simulator.protocol import GATEWAY, STATE, ApiError, api_key, read_endpoint
from infra.simulator.records import AsyncJob, Hold
from infra.simulator.state import SimState


def accept(
    state: SimState, endpoint: str, out: bytes, held: Hold, image_sha: str, idem: str, tag: str
) -> AsyncJob:
    """A new job holding the finished result `out` (or, drawn now, a failure), ready after a
    latency draw; it keeps the call's price `held` until it settles."""
    job = AsyncJob(
        id="job_" + secrets.token_hex(8),
        ready_at=time.monotonic() + random.uniform(*state.config.latency_ms) / 1000,
        image_sha=image_sha,
        idem=idem,
        tag=tag,
        endpoint=endpoint,
        created=state.now(),
        hold=held,
    )
    if faults.take_async_failure(state.config):
        job.error = "generation failed"
    else:
        job.file_id = state.store(out)
    state.jobs[job.id] = job
    return job


def accepted(job: AsyncJob) -> dict[str, Any]:
    return {"id": job.id, "status": "queued", "object": "job"}


def settle(state: SimState) -> None:
    """Jobs past their ready time are billed (or, failed, given their price back)."""
    now = time.monotonic()
    for job in state.jobs.values():
        if job.settled or job.cancelled or now < job.ready_at or job.hold is None:
            continue
        job.settled = True
        if job.error:
            billing.release(state, job.hold)
        else:
            billing.charge(
                state,
                job.hold,
                route=GATEWAY,
                endpoint=job.endpoint,
                tag=job.tag,
                image_sha=job.image_sha,
                idem=job.idem,
            )


def _job(request: web.Request) -> tuple[SimState, AsyncJob]:
    state = request.app[STATE]
    if api_key(request, GATEWAY) not in state.config.api_keys:
        raise ApiError(401, "invalid or missing API key")
    job = state.jobs.get(request.match_info["id"])
    if job is None:
        raise ApiError(404, "unknown job")
    settle(state)
    return state, job


def _view(request: web.Request, state: SimState, job: AsyncJob) -> dict[str, Any]:
    record: dict[str, Any] = {"id": job.id, "object": "job"}
    if job.cancelled:
        return {**record, "status": wire.JOB_CANCELLED}
    if not job.settled:
        return {**record, "status": "running"}
    if job.error:
        return {**record, "status": "failed", "error": {"code": "failed", "message": job.error}}
    if not state.file_kept(job.file_id or ""):
        raise ApiError(404, "job expired: its result file is no longer kept")
    url = f"{request.scheme}://{request.host}" + state.signed_path(job.file_id or "")
    return {**record, "status": "completed", "result": {"file_url": url}}


@read_endpoint(GATEWAY, polled=True)
async def poll_job(request: web.Request) -> web.Response:
    state, job = _job(request)
    now = time.monotonic()
    if job.last_poll and now - job.last_poll < state.config.async_min_poll_s:
        return web.Response(status=304)
    job.last_poll = now
    return web.json_response(_view(request, state, job))


@read_endpoint(GATEWAY, polled=True)
async def cancel_job(request: web.Request) -> web.Response:
    """Cancel a job still running: not billed, its result dropped; a finished one is a 409."""
    state, job = _job(request)
    if job.settled:
        raise ApiError(409, "job already finished")
    if not job.cancelled:
        job.cancelled = True
        billing.release(state, job.hold)
        state.drop_file(job.file_id or "")
    return web.json_response(_view(request, state, job))
