"""A worker stalled past its run lease (SIGSTOP: a GC pause, a frozen VM, a swapping host) while
another reclaims and redoes its job, woken before, during or after the newer run's call: the
stale run replaces no output, the ledger's spend is the bill to the cent, and the final job
keeps no key without a TTL. Real `upscale worker` processes at default settings; every step
is triggered on an event seen from outside (the simulator's calls in flight, the ledger)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import pytest
from redis.asyncio import Redis

from infra.stack import LocalStack
from producers.api import Producer
from tests.faults import keys_without_ttl, noise_png, output_versions
from tests.integration.conftest import Buckets, Sim, WorkerProcs, put
from worker.keys import Keys
from worker.ledger import JobRecord

pytestmark = pytest.mark.slow

CALL_MS = 4000  # the upstream's latency: the stale run is stopped mid-call
CASE_S = 75  # lease (20 s) + reclaim tick (5 s) + two calls, with room
# the workers' log lines read here
FENCED = "run lost its lease (reclaimed); it stops without writing"
CALL_OK = "upstream call ok"
HEALED = "healed stranded jobs"

Wake = Literal["before", "during", "after"]


@pytest.mark.parametrize("wake", ["before", "during", "after"])
async def test_a_run_stalled_past_its_lease_writes_nothing_when_it_wakes(
    stack: LocalStack,
    sim: Sim,
    producer: Producer,
    buckets: Buckets,
    workers: WorkerProcs,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    wake: Wake,
) -> None:
    sim.configure(latency_ms=[CALL_MS, CALL_MS])
    s3 = stack.s3_client()
    # every write of the output is a version: a stale run's replacement would show
    s3.put_bucket_versioning(Bucket=buckets.dest, VersioningConfiguration={"Status": "Enabled"})
    put(stack, buckets.src, "cat.png", noise_png())
    job = (await producer.enqueue(f"s3://{buckets.src}/cat.png")).job_id
    redis = producer.redis

    def start(name: str) -> subprocess.Popen[bytes]:
        (tmp_path / name).mkdir()
        monkeypatch.setenv("UQ_TEST_WORKER_LOGS", str(tmp_path / name))
        return workers.start(1, log_level="INFO")[0]

    async with asyncio.timeout(CASE_S):
        stale = start("stale")
        await _until(lambda: _stats(sim, "inflight") == 1)  # its call is at the upstream
        stale.send_signal(signal.SIGSTOP)
        try:
            if wake == "before":  # the newer run is held before its call (picks nothing)
                await producer.pause("test_stall: hold the newer run before its call")
            start("newer")  # reclaims the job once the stale run's lease has expired
            if wake == "before":
                await _until_record(producer, job, lambda r: r.reclaims >= 1)
            elif wake == "during":  # the newer run's call is at the upstream
                await _until(lambda: _stats(sim, "calls") == 2 and _stats(sim, "inflight") == 1)
            else:
                await _until_record(producer, job, lambda r: r.final)
            seen = await _request_ids(redis, job)
        finally:
            stale.send_signal(signal.SIGCONT)
        await _logged(tmp_path / "stale", FENCED)
        # the stale run's answer is on the books: the one request id the ledger gained
        stale_ids = [r for r in await _request_ids(redis, job) if r not in seen]
        if wake == "during":
            assert _stats(sim, "inflight") == 1, "the newer call ended before the stale run woke"
        assert len(stale_ids) == 1, stale_ids
        if wake == "before":
            await producer.resume()
        rec = await _until_record(producer, job, lambda r: r.final)
        # the ledger's books are settled (the stale answer counted) and nothing is in flight
        await _until(lambda: _stats(sim, "inflight") == 0)

    stats = sim.stats()
    logs = {name: _events(tmp_path / name) for name in ("stale", "newer")}
    calls = {
        name: [e["request_id"] for e in evs if e["event"] == CALL_OK] for name, evs in logs.items()
    }
    print(rec, stats["bills"], calls, sep="\n")
    # the stale run's end took nothing from the newer run: no job needed the healer
    assert not [e for evs in logs.values() for e in evs if e["event"] == HEALED], logs
    assert stale.poll() is None, "the stalled worker died"
    assert rec.state == "succeeded", rec
    # S3: one output, written once, by the run that stored it
    versions = output_versions(s3, rec.dest)
    assert len(versions) == 1, f"the output was written {len(versions)} times: {versions}"
    stored_id = versions[0]["Metadata"].get("upscale-request-id")
    (stale_id,) = stale_ids
    assert calls["stale"] == [stale_id], calls
    if wake == "before":  # no newer call: the newer run stored the stale run's paid answer
        assert stats["billed_calls"] == 1 and calls["newer"] == []
        assert stored_id == stale_id
    else:  # two billed calls; the newer run stored its own answer
        assert stats["billed_calls"] == 2 and len(calls["newer"]) == 1
        assert stored_id == calls["newer"][0] != stale_id
    # money: the ledger is the bill, to the cent
    assert rec.billed_calls == stats["billed_calls"], rec
    assert rec.unknown_calls == 0 and rec.possible_usd == 0, rec
    assert round(rec.spend_usd, 2) == round(stats["billed_usd"], 2), rec
    assert abs(rec.spend_usd - stats["billed_usd"]) < 1e-9, rec
    # Redis: no key of the final job without a TTL, and no index still lists it
    assert await keys_without_ttl(redis, rec) == []


async def _until(cond: Callable[[], bool | Awaitable[bool]], every: float = 0.05) -> None:
    while True:
        got = cond()
        if not isinstance(got, bool):
            got = await got
        if got:
            return
        await asyncio.sleep(every)


async def _until_record(
    producer: Producer, job: str, cond: Callable[[JobRecord], bool]
) -> JobRecord:
    while True:
        rec = await producer.status(job)
        if rec is not None and cond(rec):
            return rec
        await asyncio.sleep(0.05)


def _stats(sim: Sim, name: str) -> int:
    return int(sim.stats()[name])


async def _request_ids(redis: Redis, job: str) -> list[str]:
    raw = await redis.hget(Keys.job(job), "request_ids")  # type: ignore[misc]  # redis-py's async stubs
    ids: list[str] = json.loads(raw or "[]")
    return ids


async def _logged(logs: Path, line: str) -> None:
    def found() -> bool:
        return any(line in p.read_text(errors="replace") for p in logs.glob("*.log"))

    while not await asyncio.to_thread(found):
        await asyncio.sleep(0.05)


def _events(logs: Path) -> list[dict[str, Any]]:
    """A worker's JSON log lines."""
    lines = [line for p in logs.glob("*.log") for line in p.read_text().splitlines()]
    return [json.loads(line) for line in lines if line.startswith("{")]
