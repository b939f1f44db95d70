"""What waiting for the replicas costs each money write (Redis `WAIT`, `worker.replicas`).

    python -m tests.bench.replicas [JOBS]    (default 1,000; `make bench`)

One run, interleaved: the same sequence of money writes (an enqueue acknowledgement, a call
journaled before it leaves, a saved answer) against a replicated Redis (primary, replica,
Sentinel: `infra.stack.replicated`) with `UPSCALE_REDIS_WAIT_REPLICAS` unset (every connected
replica acknowledges each write) and with `0` (the baseline: no wait), one job at a time as a
worker makes them. Printed: the latency of each write, median and p99, and what WAIT adds.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections import defaultdict

from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from infra.stack.replicated import ReplicatedRedis
from worker.contract import JobSpec, S3Object
from worker.ledger import Ledger, PaidOutput, PaidResult
from worker.replicas import Replicas

console = Console(stderr=True)
WRITES = ("enqueue", "call_begin", "call_answered")


async def one_job(ledger: Ledger, i: int, tag: str, times: dict[str, list[float]]) -> None:
    src = S3Object(bucket="bench-src", key=f"{tag}/img{i:07d}.png", etag="e")
    spec = JobSpec(source=src, dest=S3Object(bucket="bench-out", key=f"{tag}/img{i:07d}.png"))
    token, slot = f"run{i}", f"default/s{i}"
    t0 = time.perf_counter()
    await ledger.enqueue([spec])
    t1 = time.perf_counter()
    await ledger.start(spec.job_id, token, 20_000)
    t2 = time.perf_counter()
    await ledger.call_begin(spec.job_id, token, slot, 60_000)
    t3 = time.perf_counter()
    paid = PaidResult(
        request_id=f"req{i}", outputs=[PaidOutput(url="http://up/x.png")], cost_micros=60_000
    )
    await ledger.call_answered(spec.job_id, slot, paid, token=token)
    t4 = time.perf_counter()
    for name, dt in zip(WRITES, (t1 - t0, t3 - t2, t4 - t3), strict=True):
        times[name].append(dt * 1000)


async def run(n: int) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {
        "WAIT": defaultdict(list),
        "none": defaultdict(list),
    }
    with ReplicatedRedis(relay=False) as rr:
        r = Redis(port=rr.primary_port())
        waited = Ledger(r, replicas=Replicas(r))  # the default: every connected replica
        plain = Ledger(r, replicas=Replicas(r, want=0))
        assert await waited.replicas.wanted() == 1, "the replica is not connected"
        for i in range(n):  # interleaved: both see the same machine at the same moment
            await one_job(waited, i, "w", results["WAIT"])
            await one_job(plain, i, "p", results["none"])
            if i and i % 250 == 0:
                console.print(f"  {i:,} / {n:,} jobs")
        await r.aclose()
    return results


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    res = asyncio.run(run(n))
    t = Table(title=f"money writes with and without WAIT: {n:,} jobs each, interleaved (ms)")
    for col in ("write", "no wait: median / p99", "WAIT 1 replica: median / p99", "added"):
        t.add_column(col, justify="right")

    def p99(xs: list[float]) -> float:
        return sorted(xs)[int(len(xs) * 0.99) - 1]

    for name in WRITES:
        a, b = res["none"][name], res["WAIT"][name]
        t.add_row(
            name,
            f"{statistics.median(a):.2f} / {p99(a):.2f}",
            f"{statistics.median(b):.2f} / {p99(b):.2f}",
            f"+{statistics.median(b) - statistics.median(a):.2f}",
        )
    Console().print(t)


if __name__ == "__main__":
    main()
