"""Deploy files: the kustomize tree renders offline and validates (built-in kinds against the
Kubernetes schema, CRD kinds structurally), every pod meets the "restricted" Pod Security
Standard, KEDA scales on the admissible-jobs signal and fails safe, Redis configs are durable,
compose builds once without a default token, the image installs from the lock before the source,
and the Terraform IAM keeps its least-privilege shape. Fast, no services needed."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from worker.contract import STAGING_PREFIX
from worker.metrics import fleet_metrics
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = shutil.which("kubectl")
TERRAFORM = shutil.which("terraform")
LOCK = ROOT / "requirements.lock"

CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
IRSA = "eks.amazonaws.com/role-arn"


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


def _pod_template(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod (metadata + spec) a workload runs."""
    if doc["kind"] == "Pod":
        return doc
    if doc["kind"] == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"])
    return dict(doc["spec"]["template"])


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return [
        c
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in spec.get(key) or []
    ]


# The "restricted" profile (https://kubernetes.io/docs/concepts/security/pod-security-standards/),
# including the "baseline" controls it builds on.
ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What keeps `pod` from the restricted Pod Security Standard (empty: it passes)."""
    spec = pod["spec"]
    psc = spec.get("securityContext") or {}
    bad: list[str] = []
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            bad.append(f"pod: {host}")
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            bad.append(f"volume {v['name']}: {sorted(kinds - ALLOWED_VOLUMES)}")
    for s in psc.get("sysctls") or []:
        if s["name"] not in SAFE_SYSCTLS:
            bad.append(f"pod: sysctl {s['name']}")
    if psc.get("runAsUser") == 0:
        bad.append("pod: runAsUser 0")
    if (psc.get("seLinuxOptions") or {}).get("user") or (psc.get("seLinuxOptions") or {}).get(
        "role"
    ):
        bad.append("pod: seLinuxOptions user/role")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        bad.append(f"pod: seccompProfile {pod_seccomp}")
    for c in _containers(pod):
        n = c["name"]
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            bad.append(f"{n}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{n}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{n}: capabilities.drop must include ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            bad.append(f"{n}: capabilities.add {caps['add']}")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            bad.append(f"{n}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            bad.append(f"{n}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{n}: seccompProfile must be RuntimeDefault or Localhost")
        if sc.get("procMount", "Default") != "Default":
            bad.append(f"{n}: procMount")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                bad.append(f"{n}: hostPort")
        apparmor = (sc.get("appArmorProfile") or {}).get("type")
        if apparmor == "Unconfined":
            bad.append(f"{n}: appArmorProfile Unconfined")
    return bad


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


def test_every_pod_meets_the_restricted_pod_security_standard(
    rendered: list[dict[str, Any]],
) -> None:
    workloads = [d for d in rendered if d["kind"] in WORKLOADS]
    assert {d["metadata"]["name"] for d in workloads} >= {
        "upscale-worker",
        "upscale-webhook",
        "upscale-sqs",
        "upscale-dashboard",
        "upscale-redis",
    }
    for d in workloads:
        assert restricted_violations(_pod_template(d)) == [], d["metadata"]["name"]


def test_the_restricted_check_catches_what_the_standard_forbids() -> None:
    pod = {
        "spec": {
            "hostNetwork": True,
            "securityContext": {"runAsUser": 0},
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
            "containers": [
                {
                    "name": "c",
                    "ports": [{"containerPort": 80, "hostPort": 80}],
                    "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}},
                }
            ],
        }
    }
    found = " ".join(restricted_violations(pod))
    for what in (
        "hostNetwork",
        "runAsUser 0",
        "hostPath",
        "hostPort",
        "privileged",
        "allowPrivilegeEscalation",
        "drop must include ALL",
        "SYS_ADMIN",
        "runAsNonRoot",
        "seccompProfile",
    ):
        assert what in found, what


def test_images_are_pinned_never_latest(rendered: list[dict[str, Any]]) -> None:
    for d in rendered:
        if d["kind"] not in WORKLOADS:
            continue
        for c in _containers(_pod_template(d)):
            image = c["image"]
            name, _, tag = image.rpartition(":")
            assert "@sha256:" in image or (name and "/" not in tag and tag != "latest"), image
    ours = _kind(rendered, "Deployment", "upscale-worker")["spec"]["template"]["spec"]
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
        pod = _kind(rendered, "Deployment", workload)["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == sa
        assert pod["automountServiceAccountToken"] is False  # nobody talks to the API server
        if arn is None:
            assert role[sa] is None
        else:
            assert (assumed := role[sa]) is not None and assumed.endswith(arn)
    for account in accounts.values():
        assert account["automountServiceAccountToken"] is False


def test_worker_drains_on_rollout_and_is_probed(rendered: list[dict[str, Any]]) -> None:
    deployment = _kind(rendered, "Deployment", "upscale-worker")
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


def _exported_fleet_metrics() -> set[str]:
    status = {
        "states": {},
        "lanes": {"live": {"depth": 1}, "bulk": {"depth": 0}},
        "queue_depth": 1,
        "spend": {"today_usd": 0.0, "total_usd": 0.0},
        "budgets": {"total_left_usd": 1.0, "daily_left_usd": 1.0},
        "pause": None,
        "cooldown_s": 0,
        "circuit": "closed",
        "inflight": 0,
        "calls_last_minute": 0,
    }
    return {f.name for f in text_string_to_metric_families(fleet_metrics(status).decode())}


def test_keda_scales_on_admissible_jobs_and_fails_safe(rendered: list[dict[str, Any]]) -> None:
    so = _kind(rendered, "ScaledObject", "upscale-worker")["spec"]
    assert so["scaleTargetRef"]["name"] == "upscale-worker" and so["minReplicaCount"] == 0
    # Missing data: an error, not 0 -> after failureThreshold errors, hold fallback.replicas.
    assert so["fallback"]["failureThreshold"] >= 1 and so["fallback"]["replicas"] >= 1
    exported = _exported_fleet_metrics()
    triggers = {t["name"]: t for t in so["triggers"]}
    for t in so["triggers"]:
        assert t["type"] == "prometheus"
        assert t["metadata"]["ignoreNullValues"] == "false"
        assert t.get("metricType", "AverageValue") == "AverageValue"  # fallback needs it
        for name in re.findall(r"upscale_[a-z_]+", t["metadata"]["query"]):
            assert name in exported, f"{name} is not a fleet metric the dashboard serves"
    # The scaling signal knows about pause, cooldown and circuit (0 while none may be admitted)...
    assert "upscale_jobs_admissible" in triggers["admissible"]["metadata"]["query"]
    # ...and only one worker stays while work is queued but not admissible (canary / probe).
    keep = triggers["keep-one"]["metadata"]
    assert keep["query"].startswith("clamp_max(") and keep["query"].endswith(", 1)")
    assert keep["threshold"] == "1"
    # Short waits (a 429 cooldown) do not shed workers.
    behavior = so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_pod_monitors_scrape_the_dashboard_and_the_workers(
    rendered: list[dict[str, Any]],
) -> None:
    monitors = [d for d in rendered if d["kind"] == "PodMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {"upscale-dashboard", "upscale-worker"}
    for m in monitors:
        assert m["apiVersion"] == "monitoring.coreos.com/v1"
        selector = m["spec"]["selector"]["matchLabels"]
        assert selector and m["spec"]["podMetricsEndpoints"]
        pods = [
            _pod_template(d)
            for d in rendered
            if d["kind"] in WORKLOADS
            and selector.items() <= _pod_template(d)["metadata"]["labels"].items()
        ]
        assert pods, f"{m['metadata']['name']} selects no pod"
        for ep in m["spec"]["podMetricsEndpoints"]:
            assert ep["path"] == "/metrics"
            for pod in pods:
                ports = {p.get("name") for c in _containers(pod) for p in c.get("ports") or []}
                assert ep["port"] in ports, f"{m['metadata']['name']}: no port {ep['port']}"


def _redis_conf(text: str) -> dict[str, str]:
    conf: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition(" ")
            conf[key] = value.strip()
    return conf


DURABLE = {"appendonly": "yes", "appendfsync": "always", "maxmemory-policy": "noeviction"}


def test_k8s_redis_survives_a_crash_without_losing_acknowledged_writes(
    rendered: list[dict[str, Any]],
) -> None:
    conf = _redis_conf(_kind(rendered, "ConfigMap", "upscale-redis")["data"]["redis.conf"])
    assert DURABLE.items() <= conf.items()
    sts = _kind(rendered, "StatefulSet", "upscale-redis")
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert c["args"] == ["redis-server", f"{mounts['config']}/redis.conf"]
    assert mounts["data"] == conf["dir"]  # the AOF lives on the persistent volume
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    redis_url = _kind(rendered, "ConfigMap", "upscale-config")["data"]["REDIS_URL"]
    assert redis_url.startswith("redis://redis:6379/")
    _kind(rendered, "Service", "redis")


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


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if m:
            pins[_normalize(m[1])] = m[2]
    return pins


def test_lock_pins_every_runtime_and_dev_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    pins = _lock_pins()
    for req in declared:
        name = _normalize(re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0])
        assert name in pins, f"{req} is not pinned in requirements.lock (re-run pip-compile)"
    assert all("[" not in line.split("==")[0] for line in LOCK.read_text().splitlines())


def test_image_and_make_install_from_the_lock_dependencies_before_source() -> None:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines() if ln.strip()]
    stages = [i for i, ln in enumerate(lines) if ln.startswith("FROM ")]
    deps_stage = lines[stages[0] : stages[1]]
    # The dependency stage sees only pyproject.toml and the lock: a code change reuses it.
    copies = [ln for ln in deps_stage if ln.startswith("COPY ")]
    assert copies == ["COPY pyproject.toml requirements.lock ./"]
    assert any("-c requirements.lock" in ln for ln in deps_stage)
    final = lines[stages[-1] :]
    dep_install = next(i for i, ln in enumerate(final) if "from=deps" in ln)
    app_install = next(i for i, ln in enumerate(final) if "from=app" in ln)
    assert dep_install < app_install
    assert not any(ln.startswith("COPY ") and "worker" in ln for ln in final)
    assert "USER 10001" in " ".join(final)
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install -q -c requirements.lock -e '.[dev]'" in makefile
    assert "requirements.lock" not in (ROOT / ".dockerignore").read_text()


def _statements(tf: str) -> dict[str, str]:
    """Terraform `statement { sid = "..." ... }` blocks of main.tf by sid (text, for grepping)."""
    out: dict[str, str] = {}
    for m in re.finditer(r'\bsid\s*=\s*"([^"]+)"', tf):
        start = tf.rfind("statement", 0, m.start())
        end = tf.find("\n  }", m.end())
        out[m[1]] = tf[start:end]
    return out


def test_terraform_iam_is_least_privilege_with_separate_irsa_roles() -> None:
    tf = (ROOT / "infra/terraform/main.tf").read_text()
    st = _statements(tf)
    # The idempotency HEAD of a missing output must answer 404: ListBucket on the destination.
    assert '"s3:ListBucket"' in st["DestinationKeyExistence"]
    assert "data.aws_s3_bucket.destination.arn]" in st["DestinationKeyExistence"]
    # DeleteObject only under the staging prefix.
    deleting = [sid for sid, body in st.items() if 's3:DeleteObject"' in body]
    assert deleting == ["StageConvertedInputs"]
    assert f"/{STAGING_PREFIX}*" in tf and "local.staging_arn" in st["StageConvertedInputs"]
    # Workers: S3 only. Consumer: SQS only.
    worker = tf[tf.index('data "aws_iam_policy_document" "worker"') : tf.index('"consumer" {')]
    consumer = tf[tf.index('data "aws_iam_policy_document" "consumer"') :]
    assert '"sqs:' not in worker and '"s3:' not in consumer.split("resource")[0]
    # IRSA: each role trusts one service account through the OIDC provider.
    assert "sts:AssumeRoleWithWebIdentity" in tf
    assert "system:serviceaccount:${var.k8s_namespace}:${each.value}" in tf
    assert 'irsa_trust["worker"]' in tf and 'irsa_trust["consumer"]' in tf
    # Every action is explained by a comment in (or just above) its statement.
    for sid, body in st.items():
        if sid in ("IRSA",):
            continue
        assert "#" in body, f"statement {sid} has no comment saying why its actions are there"


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

    dash = json.loads((ROOT / "infra/grafana/upscale-queue.json").read_text())
    readme = (ROOT / "README.md").read_text()
    for panel in dash["panels"]:
        for name in re.findall(r"upscale_[a-z_]+", panel["targets"][0]["expr"]):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert f"`{base}" in readme, f"{name} is not documented/exported"
