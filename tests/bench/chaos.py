"""`make chaos`: the lifecycle's faults on 100 jobs x 4 worker processes, default settings.

Prints, per fault: time to all-final, jobs stranded, images paid twice, images paid but not
stored, the ledger's spend against the simulator's bill, and `upscale reconcile`'s difference
(the ledger per day against the gateway's usage endpoint). Figures, not a timed test.

    python -m tests.bench.chaos [JOBS] [PROCS]
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime

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
    in_flight,
    nothing,
    redis_restart,
    s3_down_20s,
    scenario,
)
from worker.api import reconcile
from worker.keys import Keys
from worker.settings import Settings


async def kill_every_3s(run: Run) -> None:
    await in_flight(run)
    for _ in range(8):
        run.kill_worker()
        await asyncio.sleep(3)


async def kill_after_answer(run: Run) -> None:
    async def answered() -> bool:
        return any([await run.producer.redis.exists(Keys.paid(j)) for j in run.job_ids[:20]])

    await run.until(answered)
    for _ in range(4):
        run.kill_worker()
        await asyncio.sleep(2)
    await run.sim.post("/_admin/config", json={"download_delay_ms": 0})


async def async_kills(run: Run) -> None:
    await asyncio.sleep(2)
    for _ in range(4):
        run.kill_worker()
        await asyncio.sleep(3)


FAULTS: list[tuple[str, Fault, dict[str, object]]] = [
    ("worker SIGKILL every 3 s (8x)", kill_every_3s, {"latency_ms": [1000, 3000]}),
    ("worker SIGKILL after answers (4x)", kill_after_answer, {"download_delay_ms": 300}),
    ("redis SIGKILL, back after 3 s", redis_restart, {"latency_ms": [1000, 3000]}),
    ("S3 down for 20 s", s3_down_20s, {"latency_ms": [300, 1000]}),
    ("async 202 + 4 SIGKILLs", async_kills, {"async_mode": True, "latency_ms": [2000, 5000]}),
    ("connection lost after billing (10x)", nothing, {"disconnect_next": 10}),
    # the same faults against an upstream that honours Idempotency-Key: no image bought twice
    (
        "worker SIGKILL every 3 s (8x), key honoured",
        kill_every_3s,
        {"latency_ms": [1000, 3000], "honour_idempotency": True},
    ),
    (
        "async 202 + 4 SIGKILLs, key honoured",
        async_kills,
        {"async_mode": True, "latency_ms": [2000, 5000], "honour_idempotency": True},
    ),
]


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
        "ledger / bill USD",
        "reconcile",
    ):
        table.add_column(col)
    reports: list[Report] = []
    with LocalStack() as stack:
        env = {**os.environ, **stack.env(), "UPSCALE_LOG_LEVEL": "WARNING"}
        procs_started: list[subprocess.Popen[bytes]] = []

        def start_worker() -> subprocess.Popen[bytes]:
            p = subprocess.Popen(
                [sys.executable, "-m", "producers.cli", "worker"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
            procs_started.append(p)
            return p

        for n, (name, fault, cfg) in enumerate(FAULTS):
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
                )
            reports.append(report)
            # `upscale reconcile`'s comparison: the ledger per day against the usage endpoint
            rec = await reconcile(redis, Settings(), since=datetime.now(UTC).date())
            books = f"{rec.drift_usd:+.2f} ({len(rec.over)} over)"
            table.add_row(*report.row(), books)
            console.print(f"{name}: done", report.row()[2])
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
