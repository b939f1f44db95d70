"""The gateway's model catalogue (free, never billed, 401 for a bad key): `GET /v1/models`,
`GET /v1/models/{id}` and `GET /v1/models/{id}/schema`, which describe the exact request
shape. Which endpoint, content type and image field the schema declares follows
`model_schema_image_mode` / `model_schema_image_field`, so a test can make it disagree with
the worker's settings; `model_schema_enforced` also refuses requests that do not follow it.
The shape of these answers is not published (aigateway.sh says only that they give "the exact
endpoint, request/response examples"): `image` {mode, field} and a JSON Schema in
`input_schema` are our choice."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from infra.simulator.config import SimConfig
from infra.simulator.protocol import GATEWAY, STATE, ApiError, api_key, read_endpoint

_IMAGE = {
    "url": {"type": "string", "format": "uri", "description": "an http(s) URL of the image"},
    "data_url": {"type": "string", "description": "a data:image/...;base64 URL of the image"},
    "edits": {"type": "string", "format": "binary", "description": "the image file"},
}
_KNOBS: dict[str, Any] = {
    "prompt": {"type": "string"},
    "n": {"type": "integer", "minimum": 1, "maximum": 8, "default": 1},
    "response_format": {"enum": ["url", "b64_json"], "default": "url"},
    "resemblance": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
    "detail": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
    "magic_prompt_option": {"enum": ["AUTO", "ON", "OFF"]},
    "seed": {"type": "integer", "minimum": 0, "maximum": 2_147_483_647},
}


def endpoint(cfg: SimConfig) -> str:
    return (
        "/v1/images/edits" if cfg.model_schema_image_mode == "edits" else "/v1/images/generations"
    )


def _summary(cfg: SimConfig, model: str) -> dict[str, Any]:
    edits = cfg.model_schema_image_mode == "edits"
    return {
        "id": model,
        "object": "model",
        "owned_by": model.split("/", 1)[0],
        "endpoint": f"POST {endpoint(cfg)}",
        "content_type": "multipart/form-data" if edits else "application/json",
        "image": {"mode": cfg.model_schema_image_mode, "field": cfg.model_schema_image_field},
        "pricing": {"per_image_usd": cfg.price_usd},
    }


def schema(cfg: SimConfig, model: str) -> dict[str, Any]:
    field = cfg.model_schema_image_field
    props = {"model": {"const": model}, field: _IMAGE[cfg.model_schema_image_mode], **_KNOBS}
    required = ["model", field]
    input_schema = {"type": "object", "required": required, "properties": props}
    return {**_summary(cfg, model), "input_schema": input_schema}


def _model(request: web.Request) -> tuple[SimConfig, str]:
    cfg = request.app[STATE].config
    if api_key(request, GATEWAY) not in cfg.api_keys:
        raise ApiError(401, "invalid or missing API key")
    model = request.match_info["id"]
    if model not in cfg.models:
        raise ApiError(404, f"unknown model {model!r}")
    return cfg, model


@read_endpoint(GATEWAY)
async def list_models(request: web.Request) -> web.Response:
    """Like an OpenAI-compatible gateway: free, never billed, 401 for a bad key."""
    cfg = request.app[STATE].config
    if api_key(request, GATEWAY) not in cfg.api_keys:
        raise ApiError(401, "invalid or missing API key")
    return web.json_response({"data": [{"id": m, "object": "model"} for m in cfg.models]})


@read_endpoint(GATEWAY)
async def get_model(request: web.Request) -> web.Response:
    cfg, model = _model(request)
    return web.json_response({**_summary(cfg, model), "schema_url": f"/v1/models/{model}/schema"})


@read_endpoint(GATEWAY)
async def get_schema(request: web.Request) -> web.Response:
    return web.json_response(schema(*_model(request)))


def check_request(cfg: SimConfig, path: str, body: dict[str, Any] | None) -> None:
    """With `model_schema_enforced`: a 400 for a request the schema does not describe (the
    wrong endpoint, a missing image field, a URL where a data URL is declared or back)."""
    if not cfg.model_schema_enforced:
        return
    if path != endpoint(cfg):
        raise ApiError(400, f"this model takes POST {endpoint(cfg)} (see its /schema)")
    if body is None:
        return
    field, mode = cfg.model_schema_image_field, cfg.model_schema_image_mode
    ref = body.get(field)
    if not isinstance(ref, str):
        raise ApiError(400, f"missing {field!r}: the reference image (see the model's /schema)")
    if (mode == "url") == ref.startswith("data:"):
        raise ApiError(400, f"{field!r} must be {'an http(s)' if mode == 'url' else 'a data'} URL")
