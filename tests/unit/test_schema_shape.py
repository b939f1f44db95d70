"""A gateway model's published request shape against the image settings (`upscale health`):
read from the `image` block or, without it, from the JSON Schema; the verdict one line. The
same against the simulator's schema endpoint is `tests/integration/test_health_schema.py`."""

from __future__ import annotations

from typing import Any

import pytest

from worker.settings import Settings
from worker.upstream.schema import schema_shape, shape_check


def _schema(mode_format: str | None, field: str = "image", with_block: bool = False) -> Any:
    prop: dict[str, Any] = {"type": "string"}
    if mode_format:
        prop["format"] = mode_format
    body: dict[str, Any] = {
        "endpoint": "POST /v1/images/generations",
        "input_schema": {
            "required": ["model", field],
            "properties": {"model": {}, field: prop, "prompt": {}, "resemblance": {}},
        },
    }
    if with_block:
        body["image"] = {"mode": "url", "field": field}
    return body


@pytest.mark.parametrize(("fmt", "mode"), [("uri", "url"), (None, "data_url"), ("binary", "edits")])
def test_the_mode_is_read_from_the_json_schema(fmt: str | None, mode: str) -> None:
    shape = schema_shape(_schema(fmt, "image_url"))
    assert (shape.mode, shape.field, shape.path) == (mode, "image_url", "/v1/images/generations")
    assert shape.knobs == ("resemblance",)


def test_verdicts() -> None:
    s = Settings(api_key="k").upstream
    ok = shape_check(schema_shape(_schema("uri", with_block=True)), s)
    assert ok.ok and ok.detail.startswith("POST /v1/images/generations, image as url in 'image'")
    bad = shape_check(schema_shape(_schema(None, "image_url")), s)
    assert not bad.ok and "\n" not in bad.detail
    assert "UPSCALE_IMAGE_MODE=data_url and UPSCALE_IMAGE_FIELD=image_url" in bad.detail
    moved = dict(_schema("uri"), endpoint="POST /v2/images/upscale")
    wrong_path = shape_check(schema_shape(moved), s)
    assert not wrong_path.ok and "UPSCALE_GATEWAY_PATH=/v2/images/upscale" in wrong_path.detail
    with pytest.raises(TypeError):
        schema_shape(["not", "an", "object"])
