"""Deploy files: the kustomize tree renders offline and validates, compose matches the local
stack's guarantees, terraform is formatted. Fast, no services needed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
KUBECTL = shutil.which("kubectl")
TERRAFORM = shutil.which("terraform")


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    if KUBECTL is None:
        pytest.skip("kubectl not installed")
    out = subprocess.run(
        [KUBECTL, "kustomize", str(ROOT / "infra/k8s")], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _kind(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def test_manifests_validate_against_the_kubernetes_schema(rendered: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in rendered}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "ScaledObject"} <= kinds
    for doc in rendered:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked below
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_worker_drains_on_rollout_and_is_probed(rendered: list[dict[str, Any]]) -> None:
    pod = _kind(rendered, "Deployment", "upscale-worker")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > Settings().job_timeout_s
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"]
    secrets = {e["name"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert "UPSCALE_API_KEY" in secrets
    for d in rendered:  # no secret value is ever written into a manifest
        text = yaml.safe_dump(d)
        assert "sk-" not in text and "UPSCALE_API_KEY:" not in text


def test_keda_scales_on_the_sorted_set_depth_metric(rendered: list[dict[str, Any]]) -> None:
    so = _kind(rendered, "ScaledObject", "upscale-worker")["spec"]
    assert so["scaleTargetRef"]["name"] == "upscale-worker" and so["minReplicaCount"] == 0
    (trigger,) = so["triggers"]
    assert trigger["type"] == "prometheus"
    assert "upscale_queue_depth" in trigger["metadata"]["query"]


def test_compose_redis_is_durable_and_workers_drain() -> None:
    doc = yaml.safe_load((ROOT / "infra/docker-compose.yml").read_text())
    services = doc["services"]
    assert {"redis", "minio", "minio-init", "simulator", "worker", "webhook", "dashboard"} <= set(
        services
    )
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    assert int(services["worker"]["stop_grace_period"].rstrip("s")) > Settings().job_timeout_s
    minio_env = services["minio"]["environment"]
    assert minio_env["MINIO_NOTIFY_WEBHOOK_ENDPOINT_UPSCALE"] == "http://webhook:8080/events"


@pytest.mark.skipif(TERRAFORM is None, reason="terraform not installed")
def test_terraform_is_formatted() -> None:
    r = subprocess.run(
        [str(TERRAFORM), "fmt", "-check", "-recursive", str(ROOT / "infra/terraform")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, f"terraform fmt would change: {r.stdout}"


def test_grafana_dashboard_uses_only_exported_metrics() -> None:
    import json
    import re

    dash = json.loads((ROOT / "infra/grafana/upscale-queue.json").read_text())
    readme = (ROOT / "README.md").read_text()
    for panel in dash["panels"]:
        for name in re.findall(r"upscale_[a-z_]+", panel["targets"][0]["expr"]):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert f"`{base}" in readme, f"{name} is not documented/exported"
