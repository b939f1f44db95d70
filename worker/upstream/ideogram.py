"""Route 2: Ideogram direct (`POST /upscale`, `Api-Key`, multipart image_request + image_file).

Ideogram takes no idempotency key: every submission is a new, billed generation. So a call is
submitted asynchronously (`async`): the answer is the generation id, journaled before the wait,
and the generation is then read (`GET /v2/generations/{id}`, or v1 by configuration) until it
is `completed` (billed, with `usage_cost_usd_micros`) or `failed` (free). A synchronous answer
(`ideogram_async` off, or an upstream that ignores the flag) is a billed result as before.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import httpx

from worker.settings import UpstreamSettings, env_var
from worker.upstream import deprecation
from worker.upstream import errors as ue
from worker.upstream.base import CallResult, KeyCheck, UpscaleRequest
from worker.upstream.gateway import _json, _outputs, knobs
from worker.upstream.http import (
    fill_rate_headers,
    raise_for_status,
    request_id,
    send_built,
    transport_error,
    unreachable,
)

ASYNC_FLAG = "async"
GENERATION_ID, LEGACY_ID = "generation_id", "request_id"  # the legacy /upscale names it so
USAGE_COST = "usage_cost_usd_micros"
COMPLETED, FAILED = "completed", "failed"
SYNC_READ_MARGIN_S = 30.0  # a synchronous answer comes after the work and its upload
# An id no generation has: reading it proves the key (404) or refuses it (401), free.
_PROBE_ID = "upscale-queue-key-check"


class IdeogramUpstream:
    needs_bytes = True  # the direct API takes the file itself

    def __init__(self, settings: UpstreamSettings, client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        # a timeout does not stop the work: a synchronous call waits out the whole generation
        read = settings.read_timeout_s
        if not settings.ideogram_async:
            read = max(read, settings.ideogram_generation_s + SYNC_READ_MARGIN_S)
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(read, connect=settings.connect_timeout_s),
            follow_redirects=False,
        )
        url = urlsplit(settings.ideogram_url)
        self.origin = f"{url.scheme}://{url.netloc}"
        self.submit_path = url.path or "/"

    def _headers(self) -> dict[str, str]:
        return {"Api-Key": self.settings.api_key_value}

    def build(self, req: UpscaleRequest) -> httpx.Request:
        if req.image.data is None:
            raise ValueError("the Ideogram route needs the image bytes")
        request: dict[str, Any] = knobs(req)
        form: dict[str, str] = {}
        params: dict[str, str] = {}
        if self.settings.ideogram_async:
            where = self.settings.ideogram_async_param
            if where == "image_request":
                request[ASYNC_FLAG] = True
            else:
                (params if where == "query" else form)[ASYNC_FLAG] = "true"
        form["image_request"] = json.dumps(request)
        files = {"image_file": (req.image.filename, req.image.data, req.image.content_type)}
        return self.client.build_request(
            "POST",
            self.settings.ideogram_url,
            params=params or None,
            data=form,
            files=files,
            headers=self._headers(),
        )

    async def send(self, request: httpx.Request, idempotency_key: str | None) -> CallResult:
        resp = await send_built(self.client, request, idempotency_key)
        deprecation.note(resp, self.submit_path, _body(resp))
        raise_for_status(resp)
        rid = request_id(resp)
        data = _json(resp)
        if "data" not in data:  # accepted: the generation runs after this answer
            generation = data.get(GENERATION_ID) or data.get(LEGACY_ID)
            if not generation:
                # a 200 that is neither a result nor a generation: it may be running; the
                # caller counts it as possibly billed (never submitted again blindly)
                raise ue.OutcomeUnknown("the submit's answer has no generation id", request_id=rid)
            return fill_rate_headers(CallResult(request_id=rid, pending_id=str(generation)), resp)
        return fill_rate_headers(
            CallResult(request_id=rid, outputs=_outputs(data, rid), cost_micros=_cost(data)), resp
        )

    async def poll(self, pending_id: str) -> CallResult:
        """One read of the generation: a result with outputs (completed), or `pending_id` still
        set. A failed generation raises `UpstreamJobFailed` (free: it may be submitted again)."""
        path = self.settings.ideogram_generations_path
        try:
            resp = await self.client.get(
                self.origin + path.format(id=pending_id), headers=self._headers()
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc) from None
        deprecation.note(resp, path, _body(resp))
        if resp.status_code == 404:
            raise ue.UpstreamJobLost(f"generation {pending_id} is unknown upstream")
        raise_for_status(resp)
        data = _json(resp)
        status = str(data.get("status", "")).lower()
        if status == COMPLETED:
            # the generation id names the billed call: the ledger counts it once
            return CallResult(
                request_id=pending_id, outputs=_outputs(data, pending_id), cost_micros=_cost(data)
            )
        if status == FAILED:
            reason = data.get("failure_reason") or "no reason given"
            raise ue.UpstreamJobFailed(
                f"generation {pending_id} failed: {reason}", request_id=pending_id
            )
        return CallResult(request_id=request_id(resp), pending_id=pending_id)

    async def check_key(self) -> KeyCheck:
        # Reading a generation is free: an unknown id answers 404 for a good key, 401 for a bad.
        path = self.settings.ideogram_generations_path
        url = self.origin + path.format(id=_PROBE_ID)
        try:
            resp = await self.client.get(url, headers=self._headers())
        except httpx.HTTPError as exc:
            fix = env_var("ideogram_url")
            return KeyCheck(False, unreachable("the Ideogram API", self.origin, exc, fix))
        if resp.status_code in (401, 403):
            return KeyCheck(
                False,
                f"key invalid: Ideogram answered {resp.status_code}; check {env_var('api_key')}",
            )
        if resp.status_code != 404:
            return KeyCheck(
                False,
                f"GET {url} answered HTTP {resp.status_code} (404 expected for an unknown "
                f"generation): check {env_var('ideogram_generations_path')}",
            )
        return KeyCheck(True, "key ok (a generation read, free)")

    async def aclose(self) -> None:
        await self.client.aclose()


def _cost(data: dict[str, Any]) -> int | None:
    """The upstream's word on what it billed, where it gives one."""
    cost = data.get(USAGE_COST)
    return cost if isinstance(cost, int) and not isinstance(cost, bool) and cost >= 0 else None


def _body(resp: httpx.Response) -> dict[str, Any] | None:
    if not resp.headers.get("content-type", "").startswith("application/json"):
        return None
    try:
        data = resp.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
