"""The kustomize tree renders offline and validates (built-in kinds against the Kubernetes schema,
CRD kinds structurally); images are pinned, service accounts carry their IRSA roles, the worker
drains on rollout, and the Redis StatefulSet is durable. Fast, no services needed."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import yaml

from tests.unit.deploy.manifests import (
    CRD_GROUPS,
    DURABLE,
    WORKLOADS,
    containers,
    find,
    pod_template,
    redis_conf,
)
from worker.settings import Settings

IRSA = "eks.amazonaws.com/role-arn"


def test_manifests_validate_against_the_kubernetes_schema(rendered: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in rendered}
    assert {
        "Deployment",
        "StatefulSet",
        "Service",
        "ServiceAccount",
        "ConfigMap",
        "PodDisruptionBudget",
        "ScaledObject",
        "PodMonitor",
    } <= kinds
    for doc in rendered:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue  # CRDs: checked structurally below
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_images_are_pinned_never_latest(rendered: list[dict[str, Any]]) -> None:
    for d in rendered:
        if d["kind"] not in WORKLOADS:
            continue
        for c in containers(pod_template(d)):
            image = c["image"]
            name, _, tag = image.rpartition(":")
            assert "@sha256:" in image or (name and "/" not in tag and tag != "latest"), image
    ours = find(rendered, "Deployment", "upscale-worker")["spec"]["template"]["spec"]
    assert ours["containers"][0]["image"].startswith("ghcr.io/example/upscale-queue:")


def test_service_accounts_carry_the_irsa_roles(rendered: list[dict[str, Any]]) -> None:
    accounts = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "ServiceAccount"}
    role: dict[str, str | None] = {
        name: (sa["metadata"].get("annotations") or {}).get(IRSA) for name, sa in accounts.items()
    }
    expected = {  # workload -> (service account, IAM role it assumes or None)
        "upscale-worker": ("upscale-worker", "role/upscale-queue-worker"),
        "upscale-sqs": ("upscale-sqs", "role/upscale-queue-consumer"),
        "upscale-webhook": ("upscale-web", None),
        "upscale-dashboard": ("upscale-web", None),
    }
    for workload, (sa, arn) in expected.items():
        pod = find(rendered, "Deployment", workload)["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == sa
        assert pod["automountServiceAccountToken"] is False  # nobody talks to the API server
        if arn is None:
            assert role[sa] is None
        else:
            assert (assumed := role[sa]) is not None and assumed.endswith(arn)
    for account in accounts.values():
        assert account["automountServiceAccountToken"] is False


def test_worker_drains_on_rollout_and_is_probed(rendered: list[dict[str, Any]]) -> None:
    deployment = find(rendered, "Deployment", "upscale-worker")
    assert "replicas" not in deployment["spec"]  # KEDA owns the count; an apply must not reset it
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > Settings().jobs.job_timeout_s
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"]
    secrets = {e["name"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert "UPSCALE_API_KEY" in secrets
    for d in rendered:  # no secret value is ever written into a manifest
        text = yaml.safe_dump(d)
        assert "sk-" not in text and "UPSCALE_API_KEY:" not in text


def test_k8s_redis_survives_a_crash_without_losing_acknowledged_writes(
    rendered: list[dict[str, Any]],
) -> None:
    conf = redis_conf(find(rendered, "ConfigMap", "upscale-redis")["data"]["redis.conf"])
    assert DURABLE.items() <= conf.items()
    sts = find(rendered, "StatefulSet", "upscale-redis")
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert c["args"] == ["redis-server", f"{mounts['config']}/redis.conf"]
    assert mounts["data"] == conf["dir"]  # the AOF lives on the persistent volume
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    redis_url = find(rendered, "ConfigMap", "upscale-config")["data"]["REDIS_URL"]
    assert redis_url.startswith("redis://redis:6379/")
    find(rendered, "Service", "redis")
