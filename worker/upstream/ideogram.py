"""Route 2: Ideogram direct (`POST /upscale`, `Api-Key`, multipart image_request + image_file)."""

from __future__ import annotations

import json

import httpx

from worker.settings import UpstreamSettings, env_var
from worker.upstream import errors as e
from worker.upstream.base import CallResult, KeyCheck, UpscaleRequest
from worker.upstream.gateway import _json, _outputs, knobs
from worker.upstream.http import (
    fill_rate_headers,
    raise_for_status,
    request_id,
    send_built,
    unreachable,
)


class IdeogramUpstream:
    needs_bytes = True  # the direct API takes the file itself

    def __init__(self, settings: UpstreamSettings, client: httpx.AsyncClient | None = None) -> None:
        self.s = settings
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s),
            follow_redirects=False,
        )

    def build(self, req: UpscaleRequest) -> httpx.Request:
        if req.image.data is None:
            raise ValueError("the Ideogram route needs the image bytes")
        form = {"image_request": json.dumps(knobs(req))}
        files = {"image_file": (req.image.filename, req.image.data, req.image.content_type)}
        return self.client.build_request(
            "POST",
            self.s.ideogram_url,
            data=form,
            files=files,
            headers={"Api-Key": self.s.api_key_value},
        )

    async def send(self, request: httpx.Request, idempotency_key: str | None) -> CallResult:
        resp = await send_built(self.client, request, idempotency_key)
        raise_for_status(resp)
        rid = request_id(resp)
        return fill_rate_headers(
            CallResult(request_id=rid, outputs=_outputs(_json(resp), rid)), resp
        )

    async def poll(self, pending_id: str) -> CallResult:
        raise e.InvalidRequest("the Ideogram route has no async jobs")

    async def check_key(self) -> KeyCheck:
        # The direct API has no free endpoint to test a key against: prove only that it
        # answers (a GET of the upscale endpoint, without the key, is refused and never billed).
        try:
            await self.client.get(self.s.ideogram_url)
        except httpx.HTTPError as exc:
            url, fix = self.s.ideogram_url, env_var("ideogram_url")
            return KeyCheck(False, unreachable("the Ideogram API", url, exc, fix))
        return KeyCheck(True, "reachable; key not checked (the direct API has no free check)")

    async def aclose(self) -> None:
        await self.client.aclose()
