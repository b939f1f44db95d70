"""Real faults, default settings, real processes: SIGKILLed workers, a SIGKILLed redis-server
back on its AOF, S3 stopped, connections dropped after the upstream billed. Judged by the
simulator's bill and by S3 (see tests/faults.py)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx
import pytest

from infra.stack import LocalStack, free_port
from producers.api import Producer
from tests.faults import (
    Fault,
    Report,
    Run,
    answers_saved,
    in_flight,
    nothing,
    redis_restart,
    s3_down_20s,
    s3_request_hangs,
    scenario,
)
from tests.integration.conftest import Buckets, Sim, WorkerProcs, drain, put, wait_state
from tests.support import HTTP_TIMEOUT_S, png
from worker.keys import Keys
from worker.settings import Settings
from worker.storage import Storage

pytestmark = pytest.mark.slow

# Bounds: a run lease is 20 s and a reclaim tick 5 s, so a killed worker's jobs move again
# within ~25 s; a whole scenario ends well inside these.
DEADLINE_S = 90


def _starter(workers: WorkerProcs, **env: object) -> Callable[[], subprocess.Popen[bytes]]:
    return lambda: workers.start(1, log_level="WARNING", **env)[0]


async def _run(
    stack: LocalStack,
    producer: Producer,
    buckets: Buckets,
    workers: WorkerProcs,
    name: str,
    fault: Fault,
    *,
    jobs: int,
    procs: int = 2,
    sim_config: dict[str, object] | None = None,
    worker_env: Mapping[str, object] | None = None,
) -> Report:
    """One scenario (`tests.faults.scenario`) with workers at default settings (`worker_env`:
    what a route needs beyond them)."""
    report = await scenario(
        stack,
        producer,
        name=name,
        src_bucket=buckets.src,
        dest_bucket=buckets.dest,
        start_worker=_starter(workers, **(worker_env or {})),
        jobs=jobs,
        procs=procs,
        fault=fault,
        sim_config=sim_config,
        deadline_s=DEADLINE_S,
    )
    print(report)
    return report


def _all_done(r: Report) -> None:
    assert r.all_final_s is not None, f"jobs still not final after {DEADLINE_S} s: {r}"
    assert r.stranded == 0 and r.failed == 0, r
    assert r.bad_outputs == 0, "every job has exactly one output"
    assert r.paid_not_stored == 0, r


HONOUR = pytest.mark.parametrize("honour", [False, True], ids=["key-ignored", "key-honoured"])


@HONOUR
async def test_sigkill_during_the_call(
    stack: LocalStack,
    sim: Sim,
    producer: Producer,
    buckets: Buckets,
    workers: WorkerProcs,
    honour: bool,
) -> None:
    async def fault(run: Run) -> None:
        await in_flight(run)
        run.kill_worker()

    r = await _run(
        stack,
        producer,
        buckets,
        workers,
        "SIGKILL mid-call",
        fault,
        jobs=8,
        sim_config={"latency_ms": [1500, 2500], "honour_idempotency": honour},
    )
    _all_done(r)
    # the calls in flight in the killed worker were counted as possibly billed
    assert r.ledger_usd >= r.billed_usd - 1e-9
    if honour:
        assert r.paid_twice == 0 and abs(r.ledger_usd - r.billed_usd) < 1e-9


# A result arrives in 4 chunks, this far apart, until the kill: the last answered job is
# still downloading for seconds after its answer is saved (and before that, every other one).
CHUNK_DELAY_MS = 1000


@pytest.mark.parametrize("phase", ["download", "upload"])
async def test_sigkill_after_the_answer_never_pays_again(
    stack: LocalStack,
    sim: Sim,
    producer: Producer,
    buckets: Buckets,
    workers: WorkerProcs,
    phase: str,
) -> None:
    notes: dict[str, int] = {}

    async def fault(run: Run) -> None:
        # every answer is saved and no call is left at the upstream: a kill now can only
        # lose work done after an answer (a kill mid-call is `test_sigkill_during_the_call`)
        await answers_saved(run)
        if phase == "upload":
            stack.freeze_s3(True)  # the worker's S3 requests hang mid-upload
            try:
                await run.sim.post("/_admin/config", json={"download_delay_ms": 0})
                await s3_request_hangs(run)  # a job past its download: its upload hangs
                notes["unstored_at_kill"] = await run.unstored()
                run.kill_workers()
            finally:
                stack.freeze_s3(False)
        else:
            notes["unstored_at_kill"] = await run.unstored()
            run.kill_workers()
        await run.sim.post("/_admin/config", json={"download_delay_ms": 0})

    r = await _run(
        stack,
        producer,
        buckets,
        workers,
        f"SIGKILL mid-{phase}",
        fault,
        jobs=6,
        sim_config={"download_delay_ms": CHUNK_DELAY_MS},
    )
    print(notes)
    assert notes["unstored_at_kill"] > 0, "the kill found every output stored already"
    _all_done(r)
    assert r.paid_twice == 0 and r.bought_after_answer == 0, r
    assert abs(r.ledger_usd - r.billed_usd) < 1e-9


@pytest.mark.parametrize(
    ("name", "fault", "latency"),
    [
        ("redis SIGKILL + AOF restart", redis_restart, [1000, 2000]),
        ("S3 down 20 s", s3_down_20s, [300, 800]),
    ],
    ids=["redis", "s3"],
)
async def test_an_outage_waits_and_never_pays_twice(
    stack: LocalStack,
    sim: Sim,
    producer: Producer,
    buckets: Buckets,
    workers: WorkerProcs,
    name: str,
    fault: Fault,
    latency: list[int],
) -> None:
    r = await _run(
        stack, producer, buckets, workers, name, fault, jobs=10, sim_config={"latency_ms": latency}
    )
    assert r.workers_exited == 0, "a worker process exited on the outage"
    _all_done(r)  # nothing failed: an outage is waited out
    # no process died: exactly one billed call per image, and the ledger says so
    assert r.paid_twice == 0 and r.bought_after_answer == 0, r
    assert abs(r.ledger_usd - r.billed_usd) < 1e-9


@HONOUR
async def test_connection_lost_after_the_upstream_billed(
    stack: LocalStack,
    sim: Sim,
    producer: Producer,
    buckets: Buckets,
    workers: WorkerProcs,
    honour: bool,
) -> None:
    r = await _run(
        stack,
        producer,
        buckets,
        workers,
        "connection lost after billing",
        nothing,
        jobs=6,
        procs=1,
        sim_config={"disconnect_next": 3, "honour_idempotency": honour},
    )
    _all_done(r)
    # no process died: the ledger (billed + possibly billed) is exactly the bill
    assert abs(r.ledger_usd - r.billed_usd) < 1e-9, r
    assert r.paid_twice == (0 if honour else 3)
    unknown = sum(rec.unknown_calls for rec in r.records)
    assert unknown == 3


async def test_an_unexpected_exception_is_an_attempt_not_a_loss(
    stack: LocalStack,
    sim: Sim,
    settings: Settings,
    producer: Producer,
    buckets: Buckets,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = Storage.upload_stream
    calls = {"n": 0}

    async def flaky(self: Storage, *a: object, **kw: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("something nobody expected")
        return await real(self, *a, **kw)  # type: ignore[arg-type]  # passes upload_stream's own arguments on

    monkeypatch.setattr(Storage, "upload_stream", flaky)
    put(stack, buckets.src, "x.png", png(20, 20))
    job_id = (await producer.enqueue(f"s3://{buckets.src}/x.png")).job_id
    await drain(settings)
    rec = await wait_state(producer, job_id, "succeeded", "failed")
    assert rec.state == "succeeded" and rec.attempts == 1
    assert (
        rec.billed_calls == 1 and sim.stats()["billed_calls"] == 1
    )  # stored from the saved answer


async def test_sigterm_drain_never_reopens_picking_on_resume(
    stack: LocalStack,
    sim: Sim,
    producer: Producer,
    buckets: Buckets,
    workers: WorkerProcs,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    sim.configure(latency_ms=[2500, 3000])
    ids = []
    for i in range(30):
        put(stack, buckets.src, f"d{i}.png", png(20, 20, color=(i, 2 * i, 3 * i)))
        ids.append((await producer.enqueue(f"s3://{buckets.src}/d{i}.png")).job_id)
    monkeypatch.setenv("UQ_TEST_WORKER_LOGS", str(tmp_path))  # its log says what it did
    (proc,) = workers.start(1, log_level="INFO")
    async with asyncio.timeout(30):
        while sim.stats()["inflight"] == 0:
            await asyncio.sleep(0.05)
    await producer.flow.pause("manual", "test")
    await _logged(tmp_path, "nothing can be admitted: not picking jobs")  # saw the pause
    proc.send_signal(signal.SIGTERM)
    await _logged(tmp_path, "shutdown on SIGTERM")  # draining: picking is off for good
    # Jobs no run holds now (no arq in-progress key): only a pick could give them a run.
    idle = {j: n for j, n in (await _runs(producer, ids)).items() if not await _held(producer, j)}
    await producer.flow.resume()  # the fleet resumes while this worker drains
    assert await asyncio.to_thread(proc.wait, 60) == 0
    after = await _runs(producer, list(idle))
    assert after == idle, "the draining worker picked new jobs"
    recs = [await producer.status(j) for j in ids]
    assert not [r for r in recs if r is None or r.state == "failed"]
    # whatever was paid was stored; the rest waits for the next worker
    assert all(r.state == "succeeded" for r in recs if r and r.billed_calls)


async def _logged(logs: Path, line: str, timeout: float = 30) -> None:
    """Wait until a worker's log (`UQ_TEST_WORKER_LOGS`) holds `line`."""

    def found() -> bool:
        return any(line in p.read_text(errors="replace") for p in logs.glob("worker-*.log"))

    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(found):
            await asyncio.sleep(0.05)


async def _runs(producer: Producer, ids: list[str]) -> dict[str, int]:
    return {
        j: int(await producer.redis.hget(Keys.job(j), "runs") or 0)  # type: ignore[misc]  # redis-py's async stubs
        for j in ids
    }


async def _held(producer: Producer, job_id: str) -> bool:
    return bool(await producer.redis.exists(Keys.arq_in_progress(job_id)))


async def test_metrics_port_serves_both_lanes(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    port = free_port()
    (proc,) = workers.start(1, metrics_port=port, log_level="WARNING")
    ids = []
    for i, lane in enumerate(["live", "bulk", "live", "bulk"]):
        put(stack, buckets.src, f"m{i}.png", png(20, 20, color=(i, i, i)))
        ids.append((await producer.enqueue(f"s3://{buckets.src}/m{i}.png", lane=lane)).job_id)
    for j in ids:
        assert (
            await wait_state(producer, j, "succeeded", "failed", timeout=60)
        ).state == "succeeded"
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=HTTP_TIMEOUT_S
    ) as http:
        assert (await http.get("/readyz")).status_code == 200
        assert "upscale_upstream_calls_total" in (await http.get("/metrics")).text
    # a second process cannot bind the same port: it exits non-zero instead of serving half
    (other,) = workers.start(1, metrics_port=port, log_level="WARNING")
    t0 = time.monotonic()
    code = await asyncio.to_thread(other.wait, 30)
    assert code != 0 and time.monotonic() - t0 < 30
    assert proc.poll() is None
