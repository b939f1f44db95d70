"""Monitoring: the PodMonitors scrape the dashboard's and the workers' metrics ports, and the
Grafana dashboard uses only exported (documented) metrics. Fast, no services needed."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.unit.deploy.manifests import ROOT, WORKLOADS, containers, pod_template


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
            pod_template(d)
            for d in rendered
            if d["kind"] in WORKLOADS
            and selector.items() <= pod_template(d)["metadata"]["labels"].items()
        ]
        assert pods, f"{m['metadata']['name']} selects no pod"
        for ep in m["spec"]["podMetricsEndpoints"]:
            assert ep["path"] == "/metrics"
            for pod in pods:
                ports = {p.get("name") for c in containers(pod) for p in c.get("ports") or []}
                assert ep["port"] in ports, f"{m['metadata']['name']}: no port {ep['port']}"


def test_grafana_dashboard_uses_only_exported_metrics() -> None:
    dash = json.loads((ROOT / "infra/grafana/upscale-queue.json").read_text())
    docs = (ROOT / "docs/operations.md").read_text()  # the metrics' reference
    for panel in dash["panels"]:
        for name in re.findall(r"upscale_[a-z_]+", panel["targets"][0]["expr"]):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert f"`{base}" in docs, f"{name} is not documented/exported"
