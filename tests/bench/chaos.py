"""`make chaos`: the lifecycle's faults on 100 jobs x 4 worker processes, default settings.

Prints, per fault: time to all-final, jobs stranded, images paid twice, images paid but not
stored, outputs written more than once (where the destination bucket is versioned), keys of
final jobs left without a TTL, the ledger's spend against the simulator's bill, and `upscale
reconcile`'s difference (the ledger per day against the gateway's usage endpoint). Figures,
not a timed test. Every fault is triggered on an event seen from outside (`tests/faults.py`).

    python -m tests.bench.chaos [JOBS] [PROCS]
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import NamedTuple

import httpx
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from infra.simulator.config import SimConfig
from infra.stack import LocalStack, die_with_parent
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
    scenario,
    three_stalls,
)
from worker.api import reconcile
from worker.settings import Settings


async def kill_every_3s(run: Run) -> None:
    await in_flight(run)
    for _ in range(8):
        run.kill_worker()
        await asyncio.sleep(3)


async def kill_after_answer(run: Run) -> None:
    """Every answer saved and nothing left at the upstream (as `test_faults.py` waits): a kill
    now can lose only work done after an answer. Which worker holds which job cannot be seen
    from outside, so every worker dies (and is replaced)."""
    await answers_saved(run)
    run.notes["unstored at the kill"] = await run.unstored()
    run.kill_workers()
    await run.sim.post("/_admin/config", json={"download_delay_ms": 0})


async def async_kills(run: Run) -> None:
    await asyncio.sleep(2)
    for _ in range(4):
        run.kill_worker()
        await asyncio.sleep(3)


class Row(NamedTuple):
    name: str
    fault: Fault
    sim_config: dict[str, object]
    versioned: bool = False  # the destination keeps every write: outputs replaced are counted
    env: Mapping[str, str] = MappingProxyType({})  # workers' settings beyond the defaults
    direct: bool = False  # UPSCALE_ROUTE=ideogram (the simulator's /upscale)


FAULTS: list[Row] = [
    Row("worker SIGKILL every 3 s (8x)", kill_every_3s, {"latency_ms": [1000, 3000]}),
    # results arrive in 4 chunks 1 s apart: the last answered jobs are still downloading
    Row("every worker SIGKILLed after the answers", kill_after_answer, {"download_delay_ms": 1000}),
    Row("redis SIGKILL, back after 3 s", redis_restart, {"latency_ms": [1000, 3000]}),
    Row("S3 down for 20 s", s3_down_20s, {"latency_ms": [300, 1000]}),
    Row("async 202 + 4 SIGKILLs", async_kills, {"async_mode": True, "latency_ms": [2000, 5000]}),
    Row("connection lost after billing (10x)", nothing, {"disconnect_next": 10}),
    # the same faults against an upstream that honours Idempotency-Key: no image bought twice
    Row(
        "worker SIGKILL every 3 s (8x), key honoured",
        kill_every_3s,
        {"latency_ms": [1000, 3000], "honour_idempotency": True},
    ),
    Row(
        "async 202 + 4 SIGKILLs, key honoured",
        async_kills,
        {"async_mode": True, "latency_ms": [2000, 5000], "honour_idempotency": True},
    ),
    # issue 23: workers stopped (SIGSTOP: a GC pause, a frozen VM) mid-call past the run lease
    Row(
        "3 workers SIGSTOPped past the lease",
        three_stalls,
        {"latency_ms": [4000, 4000]},
        versioned=True,
    ),
]

# The Ideogram direct route (UPSCALE_ROUTE=ideogram): the upstream ignores Idempotency-Key
# there, as Ideogram does; a dropped connection drops the answer of an accepted, billed submit.
DIRECT_FAULTS: list[Row] = [
    Row(
        "direct: SIGKILL every 3 s (8x) + 10 dropped after billing",
        kill_every_3s,
        {"latency_ms": [1000, 3000], "disconnect_next": 10},
        direct=True,
    ),
    # not the default: what submitting again after a lost submit costs (shown for comparison)
    Row(
        "direct, lost_submit=resubmit (10 s): same faults",
        kill_every_3s,
        {"latency_ms": [1000, 3000], "disconnect_next": 10},
        env={"UPSCALE_IDEOGRAM_LOST_SUBMIT": "resubmit", "UPSCALE_IDEOGRAM_GENERATION_S": "10"},
        direct=True,
    ),
]


def _all_faults() -> list[Row]:
    """Every row (`CHAOS_ONLY=<text>`: only those whose name holds it)."""
    only = os.environ.get("CHAOS_ONLY", "")
    return [row for row in FAULTS + DIRECT_FAULTS if only in row.name]


async def main(jobs: int, procs: int) -> None:
    console = Console(width=200)
    table = Table(title=f"make chaos: {jobs} jobs x {procs} worker processes, default settings")
    for col in (
        "fault",
        "jobs",
        "all final after",
        "stranded",
        "failed",
        "paid twice",
        "paid, not stored",
        "outputs replaced",
        "keys w/o TTL",
        "ledger / bill USD",
        "reconcile",
    ):
        table.add_column(col)
    reports: list[Report] = []
    with LocalStack() as stack:
        env = {**os.environ, **stack.env(), "UPSCALE_LOG_LEVEL": "WARNING"}
        procs_started: list[subprocess.Popen[bytes]] = []
        fault_env: dict[str, str] = {}  # the running row's own settings

        def start_worker() -> subprocess.Popen[bytes]:
            p = subprocess.Popen(
                [sys.executable, "-m", "producers.cli", "worker"],
                env={**env, **fault_env},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
            procs_started.append(p)
            return p

        for n, row in enumerate(_all_faults()):
            name, fault, cfg, versioned = row.name, row.fault, row.sim_config, row.versioned
            fault_env.clear()
            fault_env.update(row.env)
            if row.direct:
                fault_env.update(
                    UPSCALE_ROUTE="ideogram", UPSCALE_IDEOGRAM_URL=f"{stack.simulator_url}/upscale"
                )
            os.environ.update(stack.env())
            redis: Redis = Redis.from_url(stack.env()["REDIS_URL"])
            await redis.flushdb()
            await _reset_sim(stack)
            producer = Producer(redis, Settings())
            src, dest = f"chaos{n}", f"chaos{n}-upscaled"
            s3 = stack.s3_client()
            for b in (src, dest):
                s3.create_bucket(Bucket=b)
            with console.status(f"{name} ..."):
                report = await scenario(
                    stack,
                    producer,
                    name=name,
                    src_bucket=src,
                    dest_bucket=dest,
                    start_worker=start_worker,
                    jobs=jobs,
                    procs=procs,
                    fault=fault,
                    sim_config=cfg,
                    deadline_s=900,
                    versioned=versioned,
                )
            reports.append(report)
            # `upscale reconcile`'s comparison: the ledger per day against the usage endpoint
            rec = await reconcile(redis, Settings(), since=datetime.now(UTC).date())
            books = f"{rec.drift_usd:+.2f} ({len(rec.over)} over)"
            table.add_row(*report.row(), books)
            console.print(f"{name}: done", report.row()[2], report.notes or "")
            await redis.aclose()
    console.print(table)


async def _reset_sim(stack: LocalStack) -> None:
    defaults = SimConfig().model_dump()
    async with httpx.AsyncClient(base_url=stack.simulator_url) as sim:
        await sim.post("/_admin/reset")
        await sim.post("/_admin/config", json={**defaults, "api_keys": {"sim-key": 6000}})


def _arg(i: int, default: int) -> int:
    return int(sys.argv[i]) if len(sys.argv) > i else default


if __name__ == "__main__":
    asyncio.run(main(_arg(1, 100), _arg(2, 4)))
