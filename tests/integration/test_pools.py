"""Upstream pools: several keys, each with its own window, wallet and pause; one fleet."""

from __future__ import annotations

import asyncio

from infra.stack import LocalStack
from producers.api import Producer
from tests.integration.conftest import FAST, Buckets, Sim, WorkerProcs, put, wait_state
from tests.support import png

POOL = [
    {"name": "key-a", "api_key_env": "SIM_KEY_A", "rpm": 20},
    {"name": "key-b", "api_key_env": "SIM_KEY_B", "rpm": 20},
]
KEYS = {"SIM_KEY_A": "sim-key-aaaa", "SIM_KEY_B": "sim-key-bbbb"}


async def _enqueue(stack: LocalStack, producer: Producer, bucket: str, n: int) -> list[str]:
    data = png(12, 12)
    ids = []
    for i in range(n):
        put(stack, bucket, f"p/{i:03d}.png", data)
        ids.append((await producer.enqueue(f"s3://{bucket}/p/{i:03d}.png")).job_id)
    return ids


async def test_two_keys_each_at_its_own_limit(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    # 40 jobs: twice what one key's window allows, all within the minute on two keys.
    sim.configure(api_keys={"sim-key-aaaa": 20, "sim-key-bbbb": 20}, burst_factor=None)
    ids = await _enqueue(stack, producer, buckets.src, 40)
    workers.start(2, upstreams=POOL, **KEYS, **FAST)
    for j in ids:
        assert (await wait_state(producer, j, "succeeded", "failed", timeout=40)).state == (
            "succeeded"
        )
    stats = sim.stats()
    assert stats["by_status"].get("429", 0) == 0
    per_key = {k: sum(1 for b in stats["bills"] if b["key"] == k) for k in ("aaaa", "bbbb")}
    assert per_key == {"aaaa": 20, "bbbb": 20}
    flow = await producer.flow.status()
    assert [(u.name, u.state, u.calls_last_minute) for u in flow.upstreams] == [
        ("key-a", "open", 20),
        ("key-b", "open", 20),
    ]
    assert [u.spend_usd for u in flow.upstreams] == [1.2, 1.2]


async def test_an_empty_wallet_moves_the_work_to_the_other_key(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    # key-a is preferred but holds 5 images' worth; key-b pays for the rest
    sim.configure(
        api_keys={"sim-key-aaaa": 6000, "sim-key-bbbb": 6000},
        wallets_usd={"sim-key-aaaa": 0.30},
        latency_ms=[50, 150],
    )
    ids = await _enqueue(stack, producer, buckets.src, 30)
    pool = [{**u, "rpm": 6000} for u in POOL]
    workers.start(2, upstreams=pool, **KEYS, **FAST)
    recs = [await wait_state(producer, j, "succeeded", "failed", timeout=60) for j in ids]
    assert all(r.state == "succeeded" for r in recs), [r.error for r in recs]
    stats = sim.stats()
    log = [e for e in stats["log"] if e["path"].startswith("/v1/")]
    first_402 = min(e["t_end"] for e in log if e["status"] == 402)
    assert [e for e in log if e["key_suffix"] == "aaaa" and e["t"] > first_402] == []
    assert sum(1 for b in stats["bills"] if b["key"] == "aaaa") == 5
    assert sum(1 for b in stats["bills"] if b["key"] == "bbbb") == 25
    flow = await producer.flow.status()
    a, b = flow.upstreams
    assert a.state == "paused" and a.pause is not None and a.pause.reason == "credits"
    assert b.state == "open" and flow.pause is None  # the fleet goes on

    # topped up and resumed, the preferred key takes new work again
    sim.http.post("/_admin/wallet", json={"key": "sim-key-aaaa", "set": 1.0}).raise_for_status()
    assert await producer.flow.resume(upstream="key-a")
    more = []
    for i in range(3):
        put(stack, buckets.src, f"more/{i}.png", png(12, 12))
        more.append((await producer.enqueue(f"s3://{buckets.src}/more/{i}.png")).job_id)
    for j in more:
        assert (await wait_state(producer, j, "succeeded", "failed", timeout=30)).state == (
            "succeeded"
        )
    assert sum(1 for b in sim.stats()["bills"] if b["key"] == "aaaa") >= 6


async def test_every_key_paused_pauses_the_fleet(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    sim.configure(
        api_keys={"sim-key-aaaa": 6000, "sim-key-bbbb": 6000},
        wallets_usd={"sim-key-aaaa": 0.0, "sim-key-bbbb": 0.06},
    )
    ids = await _enqueue(stack, producer, buckets.src, 4)
    workers.start(1, upstreams=POOL, **KEYS, **FAST)
    async with asyncio.timeout(30):
        # both wallets empty (key-b paid for one image): the fleet pauses, that one is stored
        while (await producer.flow.pause_info()) is None or not any(
            r and r.state == "succeeded" for r in [await producer.status(j) for j in ids]
        ):
            await asyncio.sleep(0.05)
    states = [await producer.status(j) for j in ids]
    assert sum(1 for r in states if r and r.state == "succeeded") == 1
    assert not any(r and r.state == "failed" for r in states)  # waiting, not failed
    fleet = await producer.flow.status()
    assert fleet.pause is not None and fleet.pause.reason == "credits"
    assert [u.state for u in fleet.upstreams] == ["paused", "paused"]
    n_calls = sim.stats()["calls"]
    await asyncio.sleep(1.0)  # nothing goes out into the empty wallets
    assert sim.stats()["calls"] == n_calls
