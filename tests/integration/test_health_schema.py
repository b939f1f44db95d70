"""`upscale health` reads the model's published request shape (`GET /v1/models/{id}/schema`,
free) once the key is accepted: reports it when it agrees with `UPSCALE_IMAGE_MODE` /
`UPSCALE_IMAGE_FIELD`, and refuses a mismatch in one line naming what to set, before anything
is paid for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.stack import LocalStack
from tests.integration.conftest import Sim
from tests.unit.test_cli_errors import assert_one_line, clean_env, upscale


def _env(stack: LocalStack, **extra: str) -> dict[str, str]:
    return clean_env(**{**stack.env(), **extra})


def test_health_reports_the_models_schema(stack: LocalStack, sim: Sim, tmp_path: Path) -> None:
    r = upscale("health", env=_env(stack), cwd=tmp_path)
    assert r.rc == 0, r.err
    line = next(ln for ln in r.out.splitlines() if "schema" in ln)
    assert "ok" in line and "POST /v1/images/generations" in line and "url in 'image'" in line
    assert "resemblance" in line and "$0.06/image" in line
    # the edits mode, when the schema says so
    sim.configure(model_schema_image_mode="edits")
    r = upscale("health", "--json", env=_env(stack, UPSCALE_IMAGE_MODE="edits"), cwd=tmp_path)
    assert r.rc == 0, r.err
    assert "POST /v1/images/edits" in json.loads(r.out)["schema"]["detail"]
    assert sim.stats()["billed_calls"] == 0


@pytest.mark.parametrize(
    ("schema", "env", "needles"),
    [
        (
            {"model_schema_image_mode": "data_url", "model_schema_image_field": "image_url"},
            {},
            ["as data_url in 'image_url'", "UPSCALE_IMAGE_MODE=data_url", "UPSCALE_IMAGE_FIELD"],
        ),
        (
            {"model_schema_image_mode": "url", "model_schema_image_field": "image_url"},
            {},
            ["field 'image_url'", "UPSCALE_IMAGE_FIELD=image_url"],
        ),
        (
            {"model_schema_image_mode": "edits"},
            {},
            ["as edits", "UPSCALE_IMAGE_MODE=edits"],
        ),
        (
            {},
            {"UPSCALE_IMAGE_MODE": "data_url"},
            ["as url in 'image'", "not data_url", "UPSCALE_IMAGE_MODE=url"],
        ),
    ],
)
def test_health_refuses_a_mismatched_image_mode_in_one_line(
    schema: dict[str, str],
    env: dict[str, str],
    needles: list[str],
    stack: LocalStack,
    sim: Sim,
    tmp_path: Path,
) -> None:
    if schema:
        sim.configure(**schema)
    r = upscale("health", env=_env(stack, **env), cwd=tmp_path)
    assert r.rc == 1
    assert_one_line(r, "unhealthy", "schema:", "ideogram/ideogram-upscale", *needles)
    assert "ok   upstream" in r.out and "FAIL schema" in r.out
    assert sim.stats()["billed_calls"] == 0
