"""A Redis that answers but refuses writes for ~10 s while paid answers arrive: full at
`maxmemory` with `noeviction` (OOM), and a primary demoted to a replica by a failover
(READONLY). Real redis-server, real worker process, default settings; judged by the simulator's
bill and S3 (tests/faults.py): the worker stays up (same PID), nothing is bought twice, every job
ends stored, readiness is false meanwhile and /metrics counts the refusals by kind.

READONLY is made the way a failover makes it, keeping the data: a throwaway redis-server
replicates the test's Redis; with writes paused for an instant it is promoted and the test's
Redis becomes its replica (a partial resync: same replication history, nothing reloaded), so
every client sees READONLY on writes and the same data on reads. Promoted back afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from infra.stack import LocalStack, free_port
from infra.stack.processes import Proc, wait_ready
from infra.stack.redis_server import redis_argv, redis_ready
from producers.api import Producer
from tests.faults import Report, Run, scenario
from tests.integration.conftest import Buckets, Sim, WorkerProcs
from tests.support import HTTP_TIMEOUT_S

pytestmark = pytest.mark.slow

JOBS = 3
REFUSE_S = 10.0  # how long Redis refuses, at least (longer if the answers take longer)
# Calls slow enough that all three are in flight when the refusal starts and answered in it.
LATENCY_MS = [3000, 3500]
DEADLINE_S = 60

Refusal = Callable[[Redis], contextlib.AbstractAsyncContextManager[None]]


@contextlib.asynccontextmanager
async def full(redis: Redis) -> AsyncIterator[None]:
    """`maxmemory` below what is used, `noeviction`: every write is refused with OOM."""
    before = await redis.config_get("maxmemory*")
    used = int((await redis.info("memory"))["used_memory"])
    await redis.config_set("maxmemory-policy", "noeviction")
    await redis.config_set("maxmemory", str(max(1, used // 2)))
    try:
        yield
    finally:
        await redis.config_set("maxmemory", before["maxmemory"])
        await redis.config_set("maxmemory-policy", before["maxmemory-policy"])


async def _replication(r: Redis) -> dict[str, str]:
    return {k: str(v) for k, v in (await r.info("replication")).items()}


async def _until(cond: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not await cond():
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def other_primary(stack: LocalStack, redis: Redis) -> AsyncIterator[Refusal]:
    """A throwaway redis-server replicating `redis` (its own empty dataset is replaced by a
    full sync, before anything is judged); `demoted` then fails over to it."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="uq-replica-") as d:
        proc = Proc("redis-replica", redis_argv(port, Path(d)), Path(d), Path(d) / "redis.log")
        proc.start()
        other = Redis(port=port)
        delay = (await redis.config_get("repl-diskless-sync-delay"))["repl-diskless-sync-delay"]
        try:
            await asyncio.to_thread(wait_ready, proc, lambda: redis_ready(port), 20)
            await redis.config_set("repl-diskless-sync-delay", "0")  # sync now, not in 5 s
            await other.replicaof("127.0.0.1", str(stack.redis_port))
            yield _demoted(redis, other, port)
        finally:
            await redis.config_set("repl-diskless-sync-delay", delay)
            await other.aclose()
            proc.stop()


def _demoted(redis: Redis, other: Redis, port: int) -> Refusal:
    @contextlib.asynccontextmanager
    async def demoted(_: Redis) -> AsyncIterator[None]:
        async def synced() -> bool:
            mine, theirs = await _replication(redis), await _replication(other)
            return (
                theirs.get("master_link_status") == "up"
                and theirs.get("master_sync_in_progress") == "0"
                and theirs.get("slave_repl_offset") == mine.get("master_repl_offset")
            )

        await _until(synced)  # the replica is up to date before writes pause
        # No write may land here between the other's promotion and this one's demotion.
        await redis.client_pause(5000, all=False)  # writes only
        try:
            await _until(synced)
            await other.replicaof("NO", "ONE")
            await redis.replicaof("127.0.0.1", str(port))

            async def following() -> bool:
                return (await _replication(redis)).get("master_link_status") == "up"

            await _until(following)
        finally:
            await redis.client_unpause()
        try:
            yield
        finally:
            await redis.replicaof("NO", "ONE")  # a primary again, with the data it followed

    return demoted


async def _refused_run(
    stack: LocalStack,
    sim: Sim,
    producer: Producer,
    buckets: Buckets,
    workers: WorkerProcs,
    refusal: Refusal,
    kind: str,
) -> tuple[Report, dict[str, object]]:
    port = free_port()
    seen: dict[str, object] = {}

    def start() -> subprocess.Popen[bytes]:
        return workers.start(1, metrics_port=port, log_level="WARNING")[0]

    async def fault(run: Run) -> None:
        (proc,) = run.procs
        seen["pid"] = proc.pid
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=HTTP_TIMEOUT_S
        ) as http:

            async def stat(name: str, n: int) -> bool:
                return int((await run.sim_stats())[name]) >= n

            async def answered() -> bool:  # the simulator sent every answer (and billed it)
                log = (await run.sim_stats())["log"]
                return sum(1 for c in log if c["status"] == 200) >= JOBS

            async def ready(want: bool) -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return ((await http.get("/readyz")).status_code == 200) is want
                return False

            await run.until(lambda: stat("inflight", JOBS))
            t0 = time.monotonic()
            async with refusal(producer.redis):
                await run.until(answered)  # every paid answer arrives while writes are refused
                await run.until(lambda: ready(False))  # the worker says it cannot work now
                seen["answered_in_refusal"] = True
                await asyncio.sleep(max(0.0, REFUSE_S - (time.monotonic() - t0)))
                seen["refused_s"] = round(time.monotonic() - t0, 1)
                seen["alive_in_refusal"] = proc.poll() is None
            await run.until(lambda: ready(True))
            metrics = (await http.get("/metrics")).text
            seen["metric"] = next(
                (
                    float(line.rsplit(" ", 1)[1])
                    for line in metrics.splitlines()
                    if line.startswith(f'upscale_redis_unavailable_total{{kind="{kind}"}}')
                ),
                0.0,
            )

    report = await scenario(
        stack,
        producer,
        name=f"redis refuses writes ({kind})",
        src_bucket=buckets.src,
        dest_bucket=buckets.dest,
        start_worker=start,
        jobs=JOBS,
        procs=1,
        fault=fault,
        sim_config={"latency_ms": LATENCY_MS},
        deadline_s=DEADLINE_S,
    )
    print(report, seen)
    return report, seen


def _judge(report: Report, seen: dict[str, object]) -> None:
    assert seen.get("answered_in_refusal") and seen.get("alive_in_refusal"), seen
    assert report.workers_exited == 0, "the worker exited while Redis refused writes"
    assert report.all_final_s is not None, f"jobs still not final after {DEADLINE_S} s: {report}"
    assert report.stranded == 0 and report.failed == 0, report
    assert report.paid_twice == 0 and report.bought_after_answer == 0, report
    assert report.bad_outputs == 0 and report.paid_not_stored == 0, report
    assert abs(report.ledger_usd - report.billed_usd) < 1e-9, report
    assert report.billed_usd == pytest.approx(0.06 * JOBS)
    assert float(str(seen["metric"])) > 0, "no refusal counted in /metrics"


async def test_a_full_redis_is_waited_out(
    stack: LocalStack,
    sim: Sim,
    producer: Producer,
    buckets: Buckets,
    workers: WorkerProcs,
) -> None:
    report, seen = await _refused_run(stack, sim, producer, buckets, workers, full, "oom")
    _judge(report, seen)


async def test_a_demoted_primary_is_waited_out(
    stack: LocalStack,
    sim: Sim,
    producer: Producer,
    buckets: Buckets,
    workers: WorkerProcs,
) -> None:
    async with other_primary(stack, producer.redis) as demoted:
        report, seen = await _refused_run(
            stack, sim, producer, buckets, workers, demoted, "readonly"
        )
    _judge(report, seen)
    assert (await _replication(producer.redis))["role"] == "master"
