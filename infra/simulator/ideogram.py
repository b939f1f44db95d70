"""Route 2, Ideogram direct: `POST /upscale` (multipart `image_file` + an `image_request` JSON
string, the `Api-Key` header); answers say `is_image_safe` and refusals carry `reject_reason`."""

from __future__ import annotations

import json

from aiohttp import web

from infra.simulator.calls import Call, form_file, validate_knobs
from infra.simulator.pipeline import handle
from infra.simulator.protocol import IDEOGRAM, STATE, ApiError


async def parse_ideogram(request: web.Request, key: str) -> Call:
    form = await request.post()
    data = form_file(form, "image_file", "multipart field 'image_file' is required")
    if len(data) > request.app[STATE].config.max_input_bytes:
        raise ApiError(413, "image_file too large")
    try:
        knobs = json.loads(str(form.get("image_request", "{}")))
    except ValueError:
        raise ApiError(400, "image_request must be a JSON string") from None
    if not isinstance(knobs, dict):
        raise ApiError(400, "image_request must be a JSON object")
    return Call(
        key=key,
        route=IDEOGRAM,
        model="ideogram/ideogram-upscale",
        image=data,
        knobs=validate_knobs(knobs),
    )


async def ideogram(request: web.Request) -> web.Response:
    return await handle(request, parse_ideogram, IDEOGRAM)
