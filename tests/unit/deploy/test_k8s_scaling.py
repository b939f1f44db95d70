"""KEDA scales the workers on the admissible-jobs signal, from metrics the dashboard really
exports, and fails safe (missing data holds a fallback count). Fast, no services needed."""

from __future__ import annotations

import re
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support import fleet_status
from tests.unit.deploy.manifests import find
from worker.fleet import Budgets
from worker.metrics import fleet_metrics


def _exported_fleet_metrics() -> set[str]:
    status = fleet_status(budgets=Budgets(total_left_usd=1.0, daily_left_usd=1.0))
    return {f.name for f in text_string_to_metric_families(fleet_metrics(status).decode())}


def test_keda_scales_on_admissible_jobs_and_fails_safe(rendered: list[dict[str, Any]]) -> None:
    so = find(rendered, "ScaledObject", "upscale-worker")["spec"]
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
