"""Route 2, Ideogram direct: `POST /upscale` (multipart `image_file` + an `image_request` JSON
string, the `Api-Key` header); answers say `is_image_safe` and refusals carry `reject_reason`.
`num_images` (1-8, each billed) is read from image_request; `async` or a `webhook_url` (a form
field, a query parameter or an image_request key: where the legacy endpoint takes them is not
published) asks for a `generation_id` at once (`generations.py`)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from infra.simulator import wire
from infra.simulator.calls import Call, form_file, parse_n, validate_knobs
from infra.simulator.pipeline import handle
from infra.simulator.protocol import IDEOGRAM, STATE, ApiError


def _flag(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("1", "true", "yes", "on")


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
    sources = (form, request.query, knobs)
    hook = next((str(s[wire.WEBHOOK_FIELD]) for s in sources if s.get(wire.WEBHOOK_FIELD)), "")
    if hook and not hook.startswith("https://"):
        raise ApiError(400, "webhook_url must be an HTTPS URL")
    return Call(
        key=key,
        route=IDEOGRAM,
        n=parse_n(knobs.get("num_images", 1), "num_images"),
        model="ideogram/ideogram-upscale",
        image=data,
        knobs=validate_knobs(knobs),
        is_async=bool(hook) or any(_flag(s.get(wire.ASYNC_FIELD)) for s in sources),
        webhook_url=hook,
    )


async def ideogram(request: web.Request) -> web.Response:
    return await handle(request, parse_ideogram, IDEOGRAM)
