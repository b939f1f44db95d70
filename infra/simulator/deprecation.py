"""Ideogram's v1 endpoints (`POST /upscale`, `GET /v1/generations/{id}`) as its docs describe an
endpoint with a v2 replacement: every answer names the replacement in a `Link` header
(rel="successor-version", pointing at its docs page); once deprecated
(`ideogram_v1_deprecated_at`), every answer also carries `Deprecation: @<unix time>` and a
successful JSON answer a `notice` field. Deprecated endpoints keep working."""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp.typedefs import Handler

from infra.simulator import wire
from infra.simulator.protocol import STATE


def _v1(path: str) -> tuple[str, str] | None:
    """(the replacement, its docs page) for a v1 endpoint's path."""
    for prefix, successor in wire.V1_SUCCESSORS.items():
        if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
            return successor
    return None


@web.middleware
async def deprecation(request: web.Request, handler: Handler) -> web.StreamResponse:
    resp = await handler(request)
    successor = _v1(request.path)
    if successor is None:
        return resp
    replacement, docs = successor
    resp.headers["Link"] = f'<{docs}>; rel="{wire.SUCCESSOR_REL}"'
    at = request.app[STATE].config.ideogram_v1_deprecated_at
    if at is None:
        return resp
    resp.headers["Deprecation"] = f"@{at}"
    if (
        isinstance(resp, web.Response)
        and resp.status < 300
        and resp.content_type == "application/json"
        and isinstance(resp.body, bytes)
    ):
        data = json.loads(resp.body)
        if isinstance(data, dict):
            data[wire.NOTICE] = f"This endpoint is deprecated. Use {replacement} instead."
            resp.body = json.dumps(data).encode()
    return resp
