"""`upscale webhook`: bucket notifications and programmatic enqueue over HTTP.

    POST /events            any S3 notification shape (MinIO, SeaweedFS, S3/SNS/EventBridge JSON)
    POST /jobs              {"source": "s3://b/k", "prompt": ..., ...} or {"jobs": [...]}
    GET  /jobs/{job_id}     the ledger record
    GET  /batches/{batch}   a batch's progress and spend
    POST /jobs/{job_id}/cancel, POST /batches/{batch}/cancel   `upscale cancel` (see its help)
    GET  /healthz           liveness (no auth)

Every endpoint but /healthz needs `Authorization: Bearer <UPSCALE_API_TOKEN>`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from pydantic import ValidationError

from producers.api import Producer, SourceNotFound, build_spec
from producers.events import MalformedEvent
from producers.intake import enqueue_notification
from producers.serving import bearer_matches, errors_middleware, serve_app
from worker.api import Settings, StorageError

log = structlog.get_logger("producers.webhook")
PRODUCER: web.AppKey[Producer] = web.AppKey("producer", Producer)
MAX_BODY = 8 * 1024 * 1024
JOB_FIELDS = {
    "source", "dest", "dest_template", "prompt", "resemblance", "detail", "magic_prompt", "seed",
    "batch", "lane", "tags", "callback_url", "version_id", "etag",
}  # fmt: skip
STRING_FIELDS = JOB_FIELDS - {"resemblance", "detail", "seed", "tags"}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path == "/healthz":
        return await handler(request)
    token = request.app[PRODUCER].settings.producers.api_token.get_secret_value()
    if not token:
        return _error(503, "the endpoint is disabled: set UPSCALE_API_TOKEN")
    if not bearer_matches(request.headers.get("Authorization", ""), token):
        return _error(401, "missing or invalid bearer token")
    return await handler(request)


async def events(request: web.Request) -> web.Response:
    body = await request.read()
    if not body:
        return _error(400, "empty body: expected an S3 notification")
    try:
        report = await enqueue_notification(request.app[PRODUCER], body, source="webhook")
    except MalformedEvent as e:
        return _error(400, f"malformed notification: {e}")
    except ValidationError as e:
        return _error(400, f"notification names an invalid object: {e.errors()[0]['msg']}")
    except ValueError as e:
        return _error(400, f"notification names an invalid object: {e}")
    return web.json_response(report.as_dict())


async def post_jobs(request: web.Request) -> web.Response:
    try:
        data = await request.json()
    except (ValueError, UnicodeDecodeError):
        return _error(400, "body must be JSON")
    items = data.get("jobs") if isinstance(data, dict) and "jobs" in data else [data]
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        return _error(400, 'expected {"source": "s3://bucket/key", ...} or {"jobs": [...]}')
    producer = request.app[PRODUCER]
    specs = []
    for n, item in enumerate(items):
        unknown = set(item) - JOB_FIELDS
        if unknown:
            return _error(400, f"job {n}: unknown field(s) {sorted(unknown)}")
        if "source" not in item:
            return _error(400, f"job {n}: 'source' (s3://bucket/key) is required")
        wrong = sorted(
            k
            for k in STRING_FIELDS & item.keys()
            if not isinstance(item[k], str) and (item[k] is not None or k == "source")
        )
        if wrong:
            return _error(400, f"job {n}: {', '.join(wrong)} must be a string")
        try:
            specs.append(build_spec(settings=producer.settings, **item))
        except (ValueError, ValidationError, TypeError) as e:
            return _error(400, f"job {n}: {e}")
    try:
        results = await producer.enqueue_specs(specs)
    except SourceNotFound as e:  # each source is read once at enqueue: its content is the job's
        return _error(404, str(e))
    except StorageError as e:
        return _error(503, f"cannot read the source objects: {e}")
    return web.json_response(
        {"jobs": [{"job_id": r.job_id, "outcome": r.outcome, "state": r.state} for r in results]}
    )


async def get_job(request: web.Request) -> web.Response:
    rec = await request.app[PRODUCER].status(request.match_info["job_id"])
    if rec is None:
        return _error(404, "no such job")
    return web.json_response(rec.model_dump())


async def get_batch(request: web.Request) -> web.Response:
    summary = await request.app[PRODUCER].batch_summary(request.match_info["batch"])
    if not summary.total:
        return _error(404, "no such batch")
    return web.json_response(summary.model_dump(mode="json"))


async def cancel_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    (outcome,) = await request.app[PRODUCER].cancel([job_id])
    if outcome == "missing":
        return _error(404, "no such job")
    return web.json_response({"job_id": job_id, "outcome": outcome})


async def cancel_batch(request: web.Request) -> web.Response:
    batch = request.match_info["batch"]
    producer = request.app[PRODUCER]
    if not (await producer.batch_summary(batch)).total:
        return _error(404, "no such batch")
    summary = await producer.cancel_batch(batch)
    return web.json_response({"batch": batch, **summary.counts})


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def create_app(producer: Producer) -> web.Application:
    app = web.Application(middlewares=[errors_middleware, auth], client_max_size=MAX_BODY)
    app[PRODUCER] = producer
    app.router.add_post("/events", events)
    app.router.add_post("/jobs", post_jobs)
    app.router.add_get("/jobs/{job_id}", get_job)
    app.router.add_get("/batches/{batch}", get_batch)
    app.router.add_post("/jobs/{job_id}/cancel", cancel_job)
    app.router.add_post("/batches/{batch}/cancel", cancel_batch)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(settings: Settings, host: str, port: int) -> None:
    await serve_app("webhook", create_app, settings, host, port)
