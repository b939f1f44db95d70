"""A worker stalled past its run lease (SIGSTOP: a GC pause, a frozen VM, a swapping host) while
another reclaims and redoes its job, woken before, during or after the newer run's call: the
stale run replaces no output, the ledger's spend is the bill to the cent, and the final job
keeps no key without a TTL. Then the same at fleet scale (30 jobs, 4 workers, three stalls).
Real `upscale worker` processes at default settings; every step is triggered on an event seen
from outside (the simulator's calls in flight, the ledger, a worker's connections)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest

from infra.stack import LocalStack
from producers.api import Producer
from tests.faults import keys_without_ttl, noise_png, output_versions, scenario, three_stalls
from tests.integration.conftest import Buckets, Sim, WorkerProcs, put
from worker.ledger import JobRecord

pytestmark = pytest.mark.slow

CALL_MS = 4000  # the upstream's latency: the stale run is stopped mid-call
CASE_S = 60  # lease (20 s) + reclaim tick (5 s) + two calls, with room
# the workers' log lines read here
FENCED = "run lost its lease (reclaimed); it stops without writing"
CALL_OK = "upstream call ok"
HEALED = "healed stranded jobs"

Wake = Literal["before", "during", "after"]


@pytest.mark.parametrize(
    ("wake", "honour"),
    [
        ("before", False),
        ("during", False),
        ("after", False),
        # An upstream that honours Idempotency-Key answers the newer call (asked again under
        # the stale call's key: its outcome was unknown) with the stale call's answer, at once
        # (so there is no "during"): the stale run then wakes with an answer already counted.
        ("after", True),
    ],
    ids=["before", "during", "after", "after-key-honoured"],
)
async def test_a_run_stalled_past_its_lease_writes_nothing_when_it_wakes(
    stack: LocalStack,
    sim: Sim,
    producer: Producer,
    buckets: Buckets,
    workers: WorkerProcs,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    wake: Wake,
    honour: bool,
) -> None:
    sim.configure(latency_ms=[CALL_MS, CALL_MS], honour_idempotency=honour)
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
                assert _stats(sim, "calls") == 1
            elif wake == "during":  # the newer run's call is at the upstream
                await _until(lambda: _stats(sim, "calls") == 2 and _stats(sim, "inflight") == 1)
            else:
                await _until_record(producer, job, lambda r: r.final)
        finally:
            stale.send_signal(signal.SIGCONT)
        await _logged(tmp_path / "stale", FENCED)  # it read its answer, and stopped
        if wake == "during":
            assert _stats(sim, "inflight") == 1, "the newer call ended before the stale run woke"
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
    (stale_id,) = calls["stale"]
    if wake == "before":  # no newer call: the newer run stored the stale run's paid answer
        assert stats["billed_calls"] == 1 and calls["newer"] == []
        assert stored_id == stale_id
    else:  # the newer run stored its own answer: the stale call's only when replayed
        assert stats["billed_calls"] == (1 if honour else 2)
        assert calls["newer"] == [stored_id] and (stored_id == stale_id) == honour
    # the ledger lists every billed call once, the stale one and the stored one included
    assert sorted(set(rec.request_ids)) == sorted({stale_id, stored_id}), rec
    assert rec.billed_calls == stats["billed_calls"], rec
    # money: the ledger is the bill, to the cent (nothing left possibly billed)
    assert rec.possible_usd == 0, rec
    assert round(rec.spend_usd, 2) == round(stats["billed_usd"], 2), rec
    assert abs(rec.spend_usd - stats["billed_usd"]) < 1e-9, rec
    # Redis: no key of the final job without a TTL, and no index still lists it
    assert await keys_without_ttl(redis, rec) == []


async def test_a_fleet_with_three_workers_stalled_past_the_lease(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    """30 jobs, 4 workers, three of them stopped mid-call past the lease and woken as their jobs
    are reclaimed, while the newer calls are in flight, and once every job is final."""
    r = await scenario(
        stack,
        producer,
        name="three stalls past the lease",
        src_bucket=buckets.src,
        dest_bucket=buckets.dest,
        start_worker=lambda: workers.start(1, log_level="WARNING")[0],
        jobs=30,
        procs=4,
        fault=three_stalls,
        sim_config={"latency_ms": [CALL_MS, CALL_MS]},
        deadline_s=60,
        versioned=True,
    )
    print(r, r.notes)
    assert len(r.notes["stalls"]) == 3 and r.reclaims > 0, r
    assert r.all_final_s is not None and r.stranded == 0 and r.failed == 0, r
    assert r.workers_exited == 0, "a stalled worker died"
    assert r.replaced == 0 and r.bad_outputs == 0 and r.paid_not_stored == 0, r
    assert abs(r.ledger_usd - r.billed_usd) < 1e-9, r
    assert r.keys_left == 0, r


async def _until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.05)


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


async def _logged(logs: Path, line: str) -> None:
    def found() -> bool:
        return any(line in p.read_text(errors="replace") for p in logs.glob("*.log"))

    while not await asyncio.to_thread(found):
        await asyncio.sleep(0.05)


def _events(logs: Path) -> list[dict[str, Any]]:
    """A worker's JSON log lines."""
    lines = [line for p in logs.glob("*.log") for line in p.read_text().splitlines()]
    return [json.loads(line) for line in lines if line.startswith("{")]
