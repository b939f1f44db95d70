"""The read models operators see (`FleetStatus`, `LaneStatus`, `BatchSummary`,
`SpendSummary`), built by `Producer` from a Redis of its own, and rendered by the CLI, the
dashboard's JSON and the fleet gauges."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from producers.api import Producer, build_spec
from producers.cli.fleet import _batch_lines, _fleet_lines
from tests.support import fleet_status
from worker.api import Budgets, JobState, Settings, SpendSummary, fleet_metrics

# What the status page (`producers/static/dashboard.html`) reads of `/api/status`.
PAGE_KEYS = {
    "states", "lanes", "queue_depth", "spend", "budgets", "finished_per_minute",
    "depth_per_minute", "pause", "cooldown_s", "circuit", "inflight", "calls_last_minute",
    "upstreams",
}  # fmt: skip


async def _producer(r: Redis, **settings: float) -> Producer:
    p = Producer(r, Settings(**settings))  # type: ignore[arg-type]
    # each names its content (an ETag), so enqueue has no HEAD to make: no S3 here
    specs = [
        build_spec("s3://photos/a.png", settings=p.settings, etag="e"),
        build_spec("s3://photos/b.png", settings=p.settings, etag="e", batch="spring"),
        build_spec("s3://photos/c.png", settings=p.settings, etag="e", batch="spring", lane="bulk"),
    ]
    await p.enqueue_specs(specs)
    return p


async def test_fleet_status_from_redis(r: Redis) -> None:
    p = await _producer(r, budget_total_usd=5.0)
    fs = await p.fleet_status()
    assert fs.states == {JobState.QUEUED: 3}
    assert {lane: v.depth for lane, v in fs.lanes.items()} == {"live": 2, "bulk": 1}
    assert fs.queue_depth == 3 and fs.admissible == 3
    assert (
        fs.flow_control.pause is None
        and fs.flow_control.circuit == "closed"
        and fs.flow_control.cooldown_s == 0
    )
    assert [u.name for u in fs.flow_control.upstreams] == ["default"]
    assert fs.spend.total_usd == 0 and fs.budgets.total_left_usd == 5.0
    assert fs.budgets.daily_usd is None and fs.budgets.daily_left_usd is None
    assert len(fs.finished_per_minute) == len(fs.depth_per_minute) == 60


async def test_the_json_keeps_the_shape_the_page_reads(r: Redis) -> None:
    fs = await (await _producer(r)).fleet_status()
    doc = json.loads(json.dumps(fs.model_dump(mode="json")))
    assert set(doc) == PAGE_KEYS
    assert doc["states"] == {"queued": 3}
    assert doc["lanes"]["live"] == {"depth": 2, "calls_last_minute": 0, "oldest_age_s": 0.0}
    assert doc["upstreams"][0]["name"] == "default" and doc["upstreams"][0]["pause"] is None


async def test_a_pause_shows_everywhere(r: Redis) -> None:
    p = await _producer(r)
    assert await p.pause("maintenance") is None
    again = await p.pause("twice")
    assert again is not None and (again.reason, again.detail) == ("manual", "maintenance")
    fs = await p.fleet_status()
    assert fs.flow_control.pause == again and fs.admissible == 0
    assert fs.model_dump(mode="json")["pause"]["reason"] == "manual"
    assert any("PAUSED" in line and "maintenance" in line for line in _fleet_lines(fs))
    text = fleet_metrics(fs).decode()
    (paused,) = (f for f in text_string_to_metric_families(text) if f.name == "upscale_paused")
    assert [(s.labels["reason"], s.value) for s in paused.samples] == [("manual", 1)]
    assert await p.resume() and (await p.fleet_status()).flow_control.pause is None


async def test_batch_summary_and_spend(r: Redis) -> None:
    p = await _producer(r)
    b = await p.batch_summary("spring")
    assert (b.batch, b.total, b.states, b.spend_usd) == ("spring", 2, {JobState.QUEUED: 2}, 0)
    assert b.final == 0 and not b.done and b.model_dump()["final"] == 0
    assert _batch_lines(b) == ["batch [bold]spring[/]: 2 job(s), spend $0.00", "  queued=2"]
    assert [x.batch for x in await p.recent_batches()] == ["spring"]
    assert b.model_dump(mode="json")["states"] == {"queued": 2}
    missing = await p.batch_summary("nope")
    assert missing.total == 0 and not missing.done
    sp = await p.spend()
    assert isinstance(sp, SpendSummary) and sp.total_usd == sp.today_usd == 0


def test_rendering_a_built_status() -> None:
    lines = _fleet_lines(fleet_status())
    assert lines[0] == "jobs: queued=30  running=2   queue depth: 42"
    assert lines[1].split() == ["live", "depth", "12", "calls/min", "17", "oldest", "ready", "1s"]
    assert "[green]running[/]" in lines[3]
    assert lines[-1] == "spend: today $1.20  total $9.60"


def test_budgets_left_and_spent() -> None:
    spend = SpendSummary(total_usd=4.0, today_usd=1.5, day="2026-12-01")
    b = Budgets.left(5.0, 1.0, spend)
    assert (b.total_left_usd, b.daily_left_usd, b.spent) == (1.0, 0.0, True)
    assert not Budgets.left(None, None, spend).spent
