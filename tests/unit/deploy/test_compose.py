"""docker-compose: one build, no default token, local-only ports and a durable Redis. Fast, no
services needed."""

from __future__ import annotations

import re

import yaml

from tests.unit.deploy.manifests import DURABLE, ROOT
from worker.settings import Settings


def test_compose_builds_once_has_no_default_token_and_a_durable_redis() -> None:
    doc = yaml.safe_load((ROOT / "infra/docker-compose.yml").read_text())
    services = doc["services"]
    assert {"redis", "minio", "minio-init", "simulator", "worker", "webhook", "dashboard"} <= set(
        services
    )
    args = services["redis"]["command"]
    opts = dict(zip(args[1::2], args[2::2], strict=True))
    assert {f"--{k}": v for k, v in DURABLE.items()}.items() <= opts.items()
    assert int(services["worker"]["stop_grace_period"].rstrip("s")) > Settings().jobs.job_timeout_s
    minio_env = services["minio"]["environment"]
    assert minio_env["MINIO_NOTIFY_WEBHOOK_ENDPOINT_UPSCALE"] == "http://webhook:8080/events"
    # One build; every other service of ours runs the image it tags.
    builders = [name for name, s in services.items() if "build" in s]
    assert builders == ["worker"]
    ours = services["worker"]["image"]
    for name in ("simulator", "webhook", "dashboard"):
        assert services[name]["image"] == ours and services[name]["pull_policy"] == "never"
    # No default token: compose refuses to start without one; published ports stay local.
    for env in (services["webhook"]["environment"], services["dashboard"]["environment"]):
        assert re.fullmatch(r"\$\{UPSCALE_API_TOKEN:\?[^}]+\}", env["UPSCALE_API_TOKEN"])
    assert minio_env["MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_UPSCALE"].startswith("${UPSCALE_API_TOKEN:?")
    for name, s in services.items():
        for port in s.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"
