"""What the deploy-file tests share: the repository, the rendered kustomize tree's documents and
the pods they run, and the Redis durability every deployment keeps."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
KUBECTL = shutil.which("kubectl")

CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
# What a Redis that loses no acknowledged write runs with (k8s ConfigMap, compose command).
DURABLE = {"appendonly": "yes", "appendfsync": "always", "maxmemory-policy": "noeviction"}


def render(kubectl: str) -> list[dict[str, Any]]:
    """`kubectl kustomize infra/k8s`, as documents."""
    out = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "infra/k8s")], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def pod_template(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod (metadata + spec) a workload runs."""
    if doc["kind"] == "Pod":
        return doc
    if doc["kind"] == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"])
    return dict(doc["spec"]["template"])


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return [
        c
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in spec.get(key) or []
    ]


def redis_conf(text: str) -> dict[str, str]:
    conf: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition(" ")
            conf[key] = value.strip()
    return conf
