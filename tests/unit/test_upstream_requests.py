"""A call is built (encoded) before it is journaled and sent after: the idempotency key the
journal gives is only known at send time, so it must be added then, on every route."""

from __future__ import annotations

import json

import httpx
import pytest

from worker.contract import UpscaleParams
from worker.settings import Settings
from worker.upstream import make_upstream
from worker.upstream.base import ImageInput, UpscaleRequest

PNG = b"\x89PNG\r\n\x1a\nfake"


@pytest.mark.parametrize(
    ("route", "image_mode"),
    [("gateway", "url"), ("gateway", "data_url"), ("gateway", "edits"), ("ideogram", "url")],
)
async def test_the_idempotency_key_is_added_when_the_call_is_sent(
    route: str, image_mode: str
) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"created": 1, "data": [{"url": "https://r/x.png"}]})

    settings = Settings(route=route, image_mode=image_mode, api_key="k-secret")
    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    up = make_upstream(settings.upstream, client)
    image = ImageInput(url="https://s3/src.png", data=PNG, content_type="image/png")
    req = UpscaleRequest(image=image, params=UpscaleParams(), model="m", tag="batch 1")
    built = up.build(req)
    assert "Idempotency-Key" not in built.headers
    result = await up.send(built, "job-1:2")
    await client.aclose()
    assert [r.headers["Idempotency-Key"] for r in seen] == ["job-1:2"]
    assert result.outputs and result.outputs[0].url == "https://r/x.png"
    if route == "gateway" and image_mode != "edits":
        body = json.loads(seen[0].content)
        assert body["model"] == "m" and body["n"] == 1
