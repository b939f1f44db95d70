"""Every pod meets the "restricted" Pod Security Standard, and the check itself catches what
the standard forbids. Fast, no services needed."""

from __future__ import annotations

from typing import Any

from tests.unit.deploy.manifests import WORKLOADS, containers, pod_template

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
    for c in containers(pod):
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
        assert restricted_violations(pod_template(d)) == [], d["metadata"]["name"]


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
