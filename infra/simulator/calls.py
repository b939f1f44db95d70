"""A call as both routes parse it (`Call`), and the request checks they share: the model knobs,
`n`, a multipart file, and fetching a reference image given as a URL or a data URL."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from aiohttp import web

from infra.simulator.protocol import ApiError

KNOBS = ("resemblance", "detail", "seed", "magic_prompt_option", "prompt")


@dataclass
class Call:
    key: str
    route: int  # 1 gateway, 2 ideogram (`protocol.GATEWAY`, `protocol.IDEOGRAM`)
    n: int = 1
    model: str = "ideogram/ideogram-upscale"
    image: bytes = b""
    response_format: str = "url"
    knobs: dict[str, Any] | None = None
    is_async: bool = False  # Ideogram: `async` or a `webhook_url` (answer a generation_id now)
    webhook_url: str = ""


def validate_knobs(knobs: dict[str, Any]) -> dict[str, Any]:
    for name in ("resemblance", "detail"):
        if name in knobs and not (isinstance(knobs[name], int) and 1 <= knobs[name] <= 100):
            raise ApiError(400, f"{name} must be an integer 1-100")
    if "seed" in knobs and not (
        isinstance(knobs["seed"], int) and 0 <= knobs["seed"] <= 2_147_483_647
    ):
        raise ApiError(400, "seed must be an integer 0-2147483647")
    if "magic_prompt_option" in knobs and knobs["magic_prompt_option"] not in ("AUTO", "ON", "OFF"):
        raise ApiError(400, "magic_prompt_option must be AUTO, ON or OFF")
    return knobs


def parse_n(value: Any, name: str = "n") -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} must be an integer 1-8") from None
    if not 1 <= n <= 8:
        raise ApiError(400, f"{name} must be an integer 1-8")
    return n


def form_file(form: Mapping[str, object], field: str, missing: str) -> bytes:
    """The bytes of the multipart file `field` (a 400 saying `missing` if there is none)."""
    image = form.get(field)
    if not isinstance(image, web.FileField):
        raise ApiError(400, missing)
    return image.file.read()


async def fetch_image(ref: str, limit: int) -> bytes:
    if ref.startswith("data:"):
        header, _, payload = ref.partition(",")
        if ";base64" not in header:
            raise ApiError(400, "data URL must be base64")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "data URL is not valid base64") from None
    elif ref.startswith(("http://", "https://")):
        try:
            async with httpx.AsyncClient(timeout=20) as client:
                resp = await client.get(ref)
        except httpx.HTTPError as e:
            raise ApiError(400, f"could not fetch image URL: {type(e).__name__}") from None
        if resp.status_code != 200:
            raise ApiError(400, f"could not fetch image URL: HTTP {resp.status_code}")
        data = resp.content
    else:
        raise ApiError(400, "image must be an http(s) URL or a data URL")
    if len(data) > limit:
        raise ApiError(400, f"image is larger than {limit} bytes")
    return data
