"""Route 1: the OpenAI-compatible gateway (`/v1/images/generations`, `/v1/images/edits`)."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import httpx

from worker.settings import UpstreamSettings, env_var
from worker.upstream import errors as ue
from worker.upstream.base import CallResult, ImageInput, KeyCheck, UpscaleRequest, UpstreamOutput
from worker.upstream.http import (
    fill_rate_headers,
    raise_for_status,
    request_id,
    send_built,
    transport_error,
    unreachable,
)
from worker.upstream.schema import schema_shape, shape_check

_TAG_SAFE = re.compile(r"[^A-Za-z0-9._:@\-]")


def tag_for(batch: str) -> str:
    """The `x-aig-tag` a batch's calls carry (the gateway's books are kept per tag)."""
    return _TAG_SAFE.sub("_", batch)[:128]


def knobs(req: UpscaleRequest) -> dict[str, Any]:
    """The model's knobs under their wire names; unset ones are left to the upstream default."""
    p = req.params
    out: dict[str, Any] = {
        "prompt": p.prompt,
        "resemblance": p.resemblance,
        "detail": p.detail,
        "magic_prompt_option": p.magic_prompt,
        "seed": p.seed,
    }
    return {k: v for k, v in out.items() if v is not None}


class GatewayUpstream:
    """Sends the reference image as a URL, a data URL or a multipart file (`image_mode`)."""

    def __init__(self, settings: UpstreamSettings, client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.base = settings.gateway_url.rstrip("/")
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s),
            follow_redirects=False,
        )
        self.needs_bytes = settings.image_mode in ("data_url", "edits")

    def _headers(self, tag: str | None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.settings.api_key_value}"}
        if tag:
            h["x-aig-tag"] = tag_for(tag)
        return h

    def build(self, req: UpscaleRequest) -> httpx.Request:
        """The request, encoded (a data URL's base64 and JSON happen here, not as it leaves)."""
        if self.settings.image_mode == "edits":
            return self._edits_request(req)
        body: dict[str, Any] = {
            "model": req.model,
            "n": 1,
            "response_format": self.settings.response_format,
            self.settings.image_field: self._image_ref(req.image),
            **knobs(req),
        }
        return self.client.build_request(
            "POST",
            self.base + self.settings.gateway_path,
            json=body,
            headers=self._headers(req.tag),
        )

    async def send(self, request: httpx.Request, idempotency_key: str | None) -> CallResult:
        return self._parse(await send_built(self.client, request, idempotency_key))

    def _image_ref(self, image: ImageInput) -> str:
        if self.settings.image_mode == "url":
            if not image.url:
                raise ValueError("image_mode=url needs a presigned URL")
            return image.url
        if image.data is None:
            raise ValueError("image_mode=data_url needs the image bytes")
        return f"data:{image.content_type};base64,{base64.b64encode(image.data).decode()}"

    def _edits_request(self, req: UpscaleRequest) -> httpx.Request:
        if req.image.data is None:
            raise ValueError("image_mode=edits needs the image bytes")
        form = {
            "model": req.model,
            "n": "1",
            "response_format": self.settings.response_format,
            **{k: str(v) for k, v in knobs(req).items()},
        }
        files = {"image": (req.image.filename, req.image.data, req.image.content_type)}
        return self.client.build_request(
            "POST",
            self.base + self.settings.gateway_edits_path,
            data=form,
            files=files,
            headers=self._headers(req.tag),
        )

    def _parse(self, resp: httpx.Response) -> CallResult:
        raise_for_status(resp)
        rid = request_id(resp)
        data = _json(resp)
        if resp.status_code == 202:
            pending = data.get("id")
            if not pending:
                raise ue.TransientError("202 Accepted without a job id", request_id=rid)
            return fill_rate_headers(CallResult(request_id=rid, pending_id=str(pending)), resp)
        return fill_rate_headers(CallResult(request_id=rid, outputs=_outputs(data, rid)), resp)

    async def poll(self, pending_id: str) -> CallResult:
        """One poll of an async job. Returns a result with outputs, or with pending_id still set."""
        url = self.base + self.settings.gateway_jobs_path.format(id=pending_id)
        try:
            resp = await self.client.get(url, headers=self._headers(None))
        except httpx.HTTPError as exc:
            raise transport_error(exc) from None
        if resp.status_code == 304:  # polled too soon: nothing new
            return CallResult(request_id=request_id(resp), pending_id=pending_id)
        if resp.status_code == 404:
            raise ue.UpstreamJobLost(f"async job {pending_id} is unknown upstream (expired?)")
        raise_for_status(resp)
        data = _json(resp)
        status = str(data.get("status", "")).lower()
        rid = request_id(resp)
        if status in ("completed", "succeeded", "success"):
            result = data.get("result") or {}
            url_out = (
                result.get("file_url") or result.get("url") if isinstance(result, dict) else None
            )
            if not url_out:
                raise ue.TransientError("async job completed without a result URL", request_id=rid)
            out = UpstreamOutput(url=str(url_out), upstream_job=pending_id)
            return CallResult(request_id=rid, outputs=[out])
        if status in ("failed", "error", "cancelled"):
            message, code = ue.error_message(json.dumps(data).encode(), "upstream job failed")
            raise ue.UpstreamJobFailed(f"async job failed: {message}", code=code, request_id=rid)
        return CallResult(request_id=rid, pending_id=pending_id)

    async def check_key(self) -> KeyCheck:
        # OpenAI-compatible gateways list models for a valid key: free, never billed. It also
        # proves the URL (a wrong prefix answers 404) and that the model is offered.
        url = self.base + "/v1/models"
        try:
            resp = await self.client.get(url, headers=self._headers(None))
        except httpx.HTTPError as exc:
            return KeyCheck(
                False, unreachable("the gateway", self.base, exc, env_var("gateway_url"))
            )
        if resp.status_code in (401, 403):
            return KeyCheck(
                False,
                f"key invalid: the gateway answered {resp.status_code}; check {env_var('api_key')}",
            )
        if resp.status_code == 404:
            return KeyCheck(
                False,
                f"GET {url} answered 404: {env_var('gateway_url')} should be the gateway's base "
                "URL (with or without /v1)",
            )
        if not resp.is_success:
            return KeyCheck(False, f"GET {url} answered HTTP {resp.status_code}")
        try:
            models = {str(m["id"]) for m in resp.json()["data"]}
        except (ValueError, KeyError, TypeError):
            return KeyCheck(
                False,
                f"GET {url} is not an OpenAI-compatible model list: check {env_var('gateway_url')}",
            )
        if models and self.settings.model not in models:
            offered = ", ".join(sorted(models)[:5]) + (", ..." if len(models) > 5 else "")
            return KeyCheck(
                False,
                f"model {self.settings.model} is not offered by the gateway (offered: {offered}); "
                f"check {env_var('model')}",
            )
        return KeyCheck(True, "key ok")

    async def check_schema(self) -> KeyCheck:
        """The model's published request shape (`GET /v1/models/{id}/schema`, free) against
        `image_mode` / `image_field`: a mismatch would pay for calls without the image."""
        url = f"{self.base}/v1/models/{self.settings.model}/schema"
        try:
            resp = await self.client.get(url, headers=self._headers(None))
        except httpx.HTTPError as exc:
            return KeyCheck(
                False, unreachable("the gateway", self.base, exc, env_var("gateway_url"))
            )
        if resp.status_code == 404:
            return KeyCheck(
                True, f"no schema published for {self.settings.model}: request shape unchecked"
            )
        if not resp.is_success:
            return KeyCheck(False, f"GET {url} answered HTTP {resp.status_code}")
        try:
            shape = schema_shape(resp.json())
        except (ValueError, TypeError, AttributeError):
            return KeyCheck(
                True, f"the schema of {self.settings.model} is unreadable: shape unchecked"
            )
        return shape_check(shape, self.settings)

    async def aclose(self) -> None:
        await self.client.aclose()


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        raise ue.TransientError(
            f"upstream returned non-JSON (HTTP {resp.status_code})", request_id=request_id(resp)
        ) from None
    if not isinstance(data, dict):
        raise ue.TransientError("upstream returned unexpected JSON", request_id=request_id(resp))
    return data


def _outputs(data: dict[str, Any], rid: str | None) -> list[UpstreamOutput]:
    items = data.get("data")
    if not isinstance(items, list) or not items:
        raise ue.TransientError("upstream response has no data", request_id=rid)
    outs: list[UpstreamOutput] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        url, b64 = item.get("url"), item.get("b64_json")
        safe = item.get("is_image_safe", True) is not False
        seed = item.get("seed")
        outs.append(
            UpstreamOutput(
                url=str(url) if url else None,
                b64=str(b64) if b64 else None,
                seed=int(seed) if isinstance(seed, int) else None,
                resolution=item.get("upscaled_resolution") or item.get("resolution"),
                safe=safe and bool(url or b64),
            )
        )
    if not outs:
        raise ue.TransientError("upstream response has no usable output", request_id=rid)
    return outs
