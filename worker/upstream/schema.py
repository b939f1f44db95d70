"""A gateway model's published request shape (`GET /v1/models/{id}/schema`) against our
settings: how it takes the reference image (`image_mode`, `image_field`) and where
(`gateway_path` / `gateway_edits_path`). Read by `upscale health`, never by a paid call.

The answer's shape is not published beyond "the exact endpoint, request/response examples":
an `image: {mode, field}` block is read when present, else the mode and field are read from
its JSON Schema (`input_schema`: the required image property, `format` uri / binary / none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

from worker.settings import UpstreamSettings, env_var
from worker.settings.sections import ImageMode
from worker.upstream.base import KeyCheck

EDITS_FIELD = "image"  # the OpenAI SDK's multipart file field (`GatewayUpstream._edits_request`)
_NOT_IMAGE = {"model", "prompt", "n", "response_format"}
_FORMAT_MODE: dict[str, ImageMode] = {"uri": "url", "binary": "edits"}


@dataclass(frozen=True)
class SchemaShape:
    """What a schema says (None: it does not say)."""

    mode: ImageMode | None
    field: str | None
    path: str | None  # the endpoint's path
    knobs: tuple[str, ...]
    price_usd: float | None


def schema_shape(data: Any) -> SchemaShape:
    """Read a schema answer; raises ValueError / TypeError / AttributeError on a non-object."""
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    input_schema = data.get("input_schema") or {}
    props: dict[str, Any] = input_schema.get("properties") or {}
    found = data.get("image")
    image: dict[str, Any] = found if isinstance(found, dict) else {}
    mode = image.get("mode") if image.get("mode") in get_args(ImageMode) else None
    field = image.get("field") if isinstance(image.get("field"), str) else None
    if field is None:
        required = [f for f in input_schema.get("required") or [] if f not in _NOT_IMAGE]
        field = required[0] if required else None
    if mode is None and field is not None and isinstance(props.get(field), dict):
        mode = _FORMAT_MODE.get(str(props[field].get("format")), "data_url")
    endpoint = str(data.get("endpoint") or "")
    path = endpoint.split()[-1] if endpoint.strip() else None
    price = (data.get("pricing") or {}).get("per_image_usd")
    knobs = tuple(k for k in props if k not in _NOT_IMAGE and k != field)
    return SchemaShape(mode, field, path, knobs, float(price) if price is not None else None)


def shape_check(shape: SchemaShape, s: UpstreamSettings) -> KeyCheck:
    """One line: the shape when it agrees with the settings, else what to set."""
    path = s.gateway_edits_path if s.image_mode == "edits" else s.gateway_path
    field = EDITS_FIELD if s.image_mode == "edits" else s.image_field
    if shape.mode is not None and shape.mode != s.image_mode:
        fix = f"set {env_var('image_mode')}={shape.mode}"
        if shape.field and shape.mode != "edits":
            fix += f" and {env_var('image_field')}={shape.field}"
        return KeyCheck(
            False,
            f"model {s.model} takes its image as {shape.mode} in {shape.field!r} (its schema), "
            f"not {s.image_mode} in {field!r}: {fix}",
        )
    if shape.field is not None and shape.field != field:
        setting = "image_mode" if s.image_mode == "edits" else "image_field"
        return KeyCheck(
            False,
            f"model {s.model} takes its image in field {shape.field!r} (its schema), not "
            f"{field!r}: set {env_var(setting)}"
            + ("" if s.image_mode == "edits" else f"={shape.field}"),
        )
    if shape.path is not None and shape.path.rstrip("/") != path.rstrip("/"):
        setting = "gateway_edits_path" if s.image_mode == "edits" else "gateway_path"
        return KeyCheck(
            False,
            f"model {s.model} is called at {shape.path} (its schema), not {path}: "
            f"set {env_var(setting)}={shape.path}",
        )
    price = f", ${shape.price_usd:.2f}/image" if shape.price_usd is not None else ""
    knobs = f", knobs {', '.join(shape.knobs)}" if shape.knobs else ""
    return KeyCheck(
        True,
        f"POST {shape.path or path}, image as {shape.mode or s.image_mode} in "
        f"{shape.field or field!r}{knobs}{price}",
    )
