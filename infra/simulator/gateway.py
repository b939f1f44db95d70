"""Route 1, the OpenAI-compatible gateway: `POST /v1/images/generations` (JSON, the image as a
URL or a data URL) and `POST /v1/images/edits` (multipart). The model catalogue is
`catalog.py`; async jobs are polled at `/v1/jobs/{id}` (`async_jobs.py`)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from infra.simulator.calls import KNOBS, Call, fetch_image, form_file, parse_n, validate_knobs
from infra.simulator.catalog import check_request
from infra.simulator.pipeline import handle
from infra.simulator.protocol import GATEWAY, STATE, ApiError

IMAGE_FIELDS = ("image", "image_url", "reference_image")  # accepted unless the schema is enforced


async def parse_generations(request: web.Request, key: str) -> Call:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "body must be JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    cfg = request.app[STATE].config
    check_request(cfg, request.path, body)
    ref = next(
        (body[f] for f in (cfg.model_schema_image_field, *IMAGE_FIELDS) if body.get(f)), None
    )
    if not isinstance(ref, str):
        raise ApiError(400, "missing reference image (image / image_url / reference_image)")
    fmt = body.get("response_format", "url")
    if fmt not in ("url", "b64_json"):
        raise ApiError(400, "response_format must be url or b64_json")
    knobs = validate_knobs({k: body[k] for k in KNOBS if k in body})
    model = str(body.get("model", ""))
    if model not in request.app[STATE].config.models:
        raise ApiError(404, f"unknown model {model!r}")
    image = await fetch_image(ref, request.app[STATE].config.max_input_bytes)
    return Call(
        key=key,
        route=GATEWAY,
        n=parse_n(body.get("n", 1)),
        model=model,
        image=image,
        response_format=fmt,
        knobs=knobs,
    )


async def parse_edits(request: web.Request, key: str) -> Call:
    check_request(request.app[STATE].config, request.path, None)
    form = await request.post()
    data = form_file(form, "image", "multipart field 'image' (a file) is required")
    limit = request.app[STATE].config.max_input_bytes
    if len(data) > limit:
        raise ApiError(400, f"image is larger than {limit} bytes")
    knobs: dict[str, Any] = {}
    for k in KNOBS:
        if k in form:
            v = str(form[k])
            knobs[k] = (
                int(v) if k in ("resemblance", "detail", "seed") and v.lstrip("-").isdigit() else v
            )
    fmt = str(form.get("response_format", "url"))
    return Call(
        key=key,
        route=GATEWAY,
        n=parse_n(form.get("n", 1)),
        model=str(form.get("model", "")),
        image=data,
        response_format=fmt,
        knobs=validate_knobs(knobs),
    )


async def generations(request: web.Request) -> web.Response:
    return await handle(request, parse_generations, GATEWAY)


async def edits(request: web.Request) -> web.Response:
    return await handle(request, parse_edits, GATEWAY)
