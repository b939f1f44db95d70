"""The fleet gauges the dashboard serves, and the scaling signal KEDA reads from them. Pure
functions over a `FleetStatus` built by hand (`tests.support.fleet_status`): no services."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import fleet_status
from worker.fleet import Budgets, FleetStatus
from worker.flow.status import PauseInfo
from worker.metrics import fleet_metrics


def _gauge(status: FleetStatus, name: str) -> float:
    text = fleet_metrics(status).decode()
    for family in text_string_to_metric_families(text):
        if family.name == name:
            (sample,) = family.samples
            return float(sample.value)
    raise AssertionError(f"{name} not exported")


def test_admissible_is_both_lanes_depth_when_the_fleet_can_call() -> None:
    assert _gauge(fleet_status(), "upscale_jobs_admissible") == 42
    assert _gauge(fleet_status(), "upscale_queue_depth_total") == 42


@pytest.mark.parametrize(
    "over",
    [
        {"pause": PauseInfo("credits", "out of credits", 1)},
        {"pause": PauseInfo("manual", "", 1)},
        {"cooldown_s": 12.5},
        {"circuit": "open"},
        {"budgets": Budgets(total_left_usd=0.0)},
        {"budgets": Budgets(daily_left_usd=0.0)},
    ],
    ids=["paused-402", "paused-manual", "cooldown", "circuit-open", "total-spent", "daily-spent"],
)
def test_nothing_is_admissible_while_the_fleet_must_wait(over: dict[str, Any]) -> None:
    status = fleet_status(**over)
    assert status.admissible == 0
    assert _gauge(status, "upscale_jobs_admissible") == 0
    assert _gauge(status, "upscale_queue_depth_total") == 42  # the depth itself still shows


def test_half_open_circuit_admits_one_probe_and_budget_left_admits_all() -> None:
    assert fleet_status(circuit="half_open").admissible == 1
    assert fleet_status(circuit="half_open", live=0, bulk=0).admissible == 0
    assert fleet_status(budgets=Budgets(total_left_usd=5.0, daily_left_usd=0.5)).admissible == 42
    assert fleet_status(live=0, bulk=0).admissible == 0


def test_every_gauge_reads_the_model() -> None:
    text = fleet_metrics(fleet_status(pause=PauseInfo("credits", "", 1))).decode()
    families = {f.name: f.samples for f in text_string_to_metric_families(text)}
    assert {s.labels["lane"]: s.value for s in families["upscale_queue_depth"]} == {
        "live": 12,
        "bulk": 30,
    }
    jobs = {s.labels["state"]: s.value for s in families["upscale_jobs"]}
    assert jobs == {"queued": 30, "running": 2, "waiting": 0, "succeeded": 0, "failed": 0,
                    "skipped": 0, "cancelled": 0}  # fmt: skip
    assert [(s.labels["reason"], s.value) for s in families["upscale_paused"]] == [("credits", 1)]
    assert {s.labels["period"]: s.value for s in families["upscale_spend_usd"]} == {
        "today": 1.2,
        "total": 9.6,
    }
    assert families["upscale_budget_remaining_usd"] == []  # no caps
    circuit = {s.labels["state"]: s.value for s in families["upscale_circuit_state"]}
    assert circuit == {"closed": 1, "half_open": 0, "open": 0}
    assert families["upscale_inflight_calls"][0].value == 2
    assert families["upscale_calls_last_minute"][0].value == 17
