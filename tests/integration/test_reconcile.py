"""`upscale reconcile` against the simulator's books (`GET /v1/usage/by-tag`, Ideogram's
`GET /v2/account/usage`), after real worker processes were SIGKILLed with every call in flight:
difference $0.00; an injected bill is named by day and batch and exits 1; the result is kept
for the status page and `/metrics`."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis

from infra.stack import LocalStack
from producers.api import Producer
from producers.dashboard import create_app
from tests.integration.conftest import FAST, Buckets, Sim, WorkerProcs, put
from tests.support import png, serving
from tests.unit.test_cli_errors import assert_one_line, clean_env, upscale
from worker.api import (
    BooksUnreadable,
    last_reconciliation,
    reconcile,
    reconcile_metrics,
)
from worker.keys import Keys
from worker.ledger.reads import text
from worker.settings import Settings

BATCH = "rb1"


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


async def _sent(redis: Redis) -> int:
    """Calls journaled as sent (left, no answer yet)."""
    n = 0
    async for k in redis.scan_iter(Keys.call("*")):
        n += await redis.hget(k, "state") in (b"sent",)  # type: ignore[misc]  # redis-py's async stubs
    return n


async def _all_final(producer: Producer, ids: list[str], timeout: float = 90) -> None:
    async with asyncio.timeout(timeout):
        while not all(r is not None and r.final for r in [await producer.status(j) for j in ids]):
            await asyncio.sleep(0.1)


@pytest.fixture
def cli_env(stack: LocalStack) -> dict[str, str]:
    return clean_env(**stack.env())


async def test_reconcile_after_kills_then_an_injected_bill(
    stack: LocalStack,
    sim: Sim,
    producer: Producer,
    redis: Redis,
    buckets: Buckets,
    workers: WorkerProcs,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # Every call is held at the upstream; once all are there every worker is SIGKILLed (the
    # calls complete and are billed without anyone hearing the answer), then the fleet redoes
    # them. Both books count each call twice: they must agree to the cent.
    sim.configure(hold_work=True)
    ids = []
    for i in range(8):
        put(stack, buckets.src, f"r{i}.png", png(20 + i, 20))
        batch = {"batch": BATCH} if i < 6 else {}
        ids.append((await producer.enqueue(f"s3://{buckets.src}/r{i}.png", **batch)).job_id)
    procs = workers.start(2, **FAST)
    async with asyncio.timeout(60):
        while not (sim.stats()["held"] == len(ids) and await _sent(redis) == len(ids)):
            await asyncio.sleep(0.05)
    for p in procs:
        p.kill()
    for p in procs:
        p.wait(10)
    sim.configure(hold_work=False)
    sim.http.post("/_admin/release", json={}).raise_for_status()
    workers.start(2, **FAST)
    await _all_final(producer, ids)
    stats = sim.stats()
    assert stats["billed_calls"] == 2 * len(ids)  # the killed calls were billed too

    r = upscale("reconcile", env=cli_env, cwd=tmp_path)
    assert r.rc == 0, r.err
    assert "+0.00" in r.out and _today() in r.out
    r = upscale("reconcile", "--json", env=cli_env, cwd=tmp_path)
    rec = json.loads(r.out)
    assert rec["drift_usd"] == 0 and rec["over"] == []
    assert rec["upstream_usd"] == pytest.approx(stats["billed_usd"])
    rows = {(x["day"], x["batch"]): x for x in rec["rows"]}
    assert rows[(_today(), BATCH)]["ledger_usd"] == pytest.approx(6 * 2 * 0.06)
    assert rows[(_today(), "")]["upstream_usd"] == pytest.approx(2 * 2 * 0.06)

    # a bill we never saw, on the batch's tag
    sim.http.post("/_admin/bill", json={"key": "sim-key", "tag": BATCH}).raise_for_status()
    r = upscale("reconcile", "--since", _today(), env=cli_env, cwd=tmp_path)
    line = assert_one_line(r, _today(), f"batch {BATCH}", "UPSCALE_RECONCILE_THRESHOLD_USD")
    assert r.rc == 1 and "+0.06" in line, line
    r = upscale("reconcile", "--batch", BATCH, env=cli_env, cwd=tmp_path)
    assert r.rc == 1 and f"batch {BATCH}" in r.err
    # kept for the status page and /metrics
    last = await last_reconciliation(redis)
    assert last is not None and last.batch == BATCH and len(last.over) == 1
    gauges = reconcile_metrics(last).decode()
    assert 'upscale_reconcile_drift_usd{route="gateway"} 0.06' in gauges
    assert "upscale_reconcile_rows_over_threshold 1.0" in gauges
    async with serving(create_app(producer)) as url:
        import httpx

        async with httpx.AsyncClient(base_url=url) as http:
            shown = (await http.get("/api/reconcile")).json()
            assert shown["over"][0]["batch"] == BATCH and shown["over"][0]["day"] == _today()
            assert "upscale_reconcile_drift_usd" in (await http.get("/metrics")).text
    # a threshold above the drift: in step
    r = upscale(
        "reconcile", env={**cli_env, "UPSCALE_RECONCILE_THRESHOLD_USD": "0.10"}, cwd=tmp_path
    )
    assert r.rc == 0, r.err


async def test_reconcile_the_ideogram_route_per_day(
    stack: LocalStack, sim: Sim, settings: Settings, redis: Redis
) -> None:
    """Ideogram's books have no tags: per day only, read with an organisation admin's key."""
    direct = settings.model_copy(
        update={"route": "ideogram", "ideogram_url": f"{stack.simulator_url}/upscale"}
    )
    await redis.hset(Keys.spend_day_by(_today()), "default|b2", "60000")  # type: ignore[misc]
    sim.http.post(
        "/_admin/bill", json={"key": "sim-key", "route": "ideogram", "tag": "b2"}
    ).raise_for_status()
    with pytest.raises(BooksUnreadable, match="UPSCALE_RECONCILE_ADMIN_KEY"):
        await reconcile(redis, direct, since=datetime.now(UTC).date())
    sim.configure(key_rules={"sim-key": {"admin": True}})
    rec = await reconcile(redis, direct, since=datetime.now(UTC).date())
    assert [(r.route, r.day, r.batch, r.diff_usd) for r in rec.rows] == [
        ("ideogram", _today(), "*", 0.0)
    ]
    sim.http.post("/_admin/bill", json={"key": "sim-key", "route": "ideogram"}).raise_for_status()
    rec = await reconcile(redis, direct, since=datetime.now(UTC).date())
    assert [r.where for r in rec.over] == [f"{_today()} all batches (ideogram)"]
    assert {text(k) for k in await redis.hkeys(Keys.spend_day_by(_today()))} == {"default|b2"}  # type: ignore[misc]
