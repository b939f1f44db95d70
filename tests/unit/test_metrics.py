"""The fleet gauges the dashboard serves, and the scaling signal KEDA reads from them. Pure
functions over a `fleet_status()`-shaped dict: no services needed."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker.metrics import admissible_jobs, fleet_metrics


def _status(**over: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "states": {"queued": 30, "running": 2},
        "lanes": {"live": {"depth": 12}, "bulk": {"depth": 30}},
        "queue_depth": 42,
        "spend": {"today_usd": 1.2, "total_usd": 9.6},
        "budgets": {
            "total_usd": None,
            "daily_usd": None,
            "total_left_usd": None,
            "daily_left_usd": None,
        },
        "pause": None,
        "cooldown_s": 0,
        "circuit": "closed",
        "inflight": 2,
        "calls_last_minute": 17,
    }
    status.update(over)
    return status


def _gauge(status: dict[str, Any], name: str) -> float:
    text = fleet_metrics(status).decode()
    for family in text_string_to_metric_families(text):
        if family.name == name:
            (sample,) = family.samples
            return float(sample.value)
    raise AssertionError(f"{name} not exported")


def test_admissible_is_both_lanes_depth_when_the_fleet_can_call() -> None:
    assert _gauge(_status(), "upscale_jobs_admissible") == 42
    assert _gauge(_status(), "upscale_queue_depth_total") == 42


@pytest.mark.parametrize(
    "over",
    [
        {"pause": {"reason": "402", "detail": "out of credits"}},
        {"pause": {"reason": "manual"}},
        {"cooldown_s": 12.5},
        {"circuit": "open"},
        {"budgets": {"total_left_usd": 0.0, "daily_left_usd": None}},
        {"budgets": {"total_left_usd": None, "daily_left_usd": 0.0}},
    ],
    ids=["paused-402", "paused-manual", "cooldown", "circuit-open", "total-spent", "daily-spent"],
)
def test_nothing_is_admissible_while_the_fleet_must_wait(over: dict[str, Any]) -> None:
    status = _status(**over)
    assert admissible_jobs(status) == 0
    assert _gauge(status, "upscale_jobs_admissible") == 0
    assert _gauge(status, "upscale_queue_depth_total") == 42  # the depth itself still shows


def test_half_open_circuit_admits_one_probe_and_budget_left_admits_all() -> None:
    assert admissible_jobs(_status(circuit="half_open")) == 1
    assert admissible_jobs(_status(circuit="half_open", queue_depth=0)) == 0
    budgets = {"total_left_usd": 5.0, "daily_left_usd": 0.5}
    assert admissible_jobs(_status(budgets=budgets)) == 42
    assert admissible_jobs(_status(queue_depth=0)) == 0
