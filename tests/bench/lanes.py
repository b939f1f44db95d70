"""Lanes benchmark (`make bench`): a queued backfill, then live uploads trickle in.

1,000 bulk jobs are queued against a 60 RPM key; after the backfill has run past its first rolling
minute (steady state), 20 live jobs arrive one every 1.5 s. Printed: each live job's wait from enqueue to its upstream call
(p50/p95, from the simulator's log, tagged per job), the bulk rate before / during / after the
live burst, and 429s. Target: live p95 within one rate slot (~1 s at 60 RPM) plus the time for
an in-flight slot to free; 0 x 429; bulk back at full rate after.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time

from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from infra.stack import LocalStack
from producers.api import Producer, build_spec
from tests.bench.flow import CALL, Procs, ours_env, sim_admin, sim_stats, upload
from worker.settings import Settings

RPM = 60
BULK, LIVE, LIVE_GAP_S, WARMUP_S, AFTER_S = 1000, 20, 1.5, 75.0, 30.0
console = Console(stderr=True)


def rate(calls: list[float], start: float, end: float) -> str:
    n = sum(1 for t in calls if start <= t < end)
    return f"{60 * n / max(1e-9, end - start):.0f}/min"


async def main_async() -> None:
    with LocalStack() as stack:
        sim_admin(stack, "/_admin/config", {"api_keys": {stack.api_key: RPM},
                                             "burst_factor": 2.0, "burst_window_s": 10.0,
                                             "latency_ms": [1000, 3000]})  # fmt: skip
        console.print(f"uploading {BULK + LIVE} images…")
        keys = upload(stack, "lanes", BULK + LIVE)
        os.environ.update(stack.env())
        redis = Redis.from_url(stack.redis_url)
        producer = Producer(redis, Settings())
        bulk = [build_spec(f"s3://lanes/{k}", lane="bulk", batch="backfill",
                           settings=producer.settings) for k in keys[:BULK]]  # fmt: skip
        await producer.enqueue_specs(bulk)
        procs = Procs()
        # Default settings: the backfill is paced evenly on its own, so a slot frees every
        # 60/RPM s and a live job (first in the waiting line) takes the next one.
        env = ours_env(stack, rate_rpm=RPM)
        procs.start([sys.executable, "-m", "producers.cli", "worker"], env, 4)
        try:
            console.print(f"backfill running for {WARMUP_S:.0f} s, then {LIVE} live uploads…")
            await asyncio.sleep(WARMUP_S)
            t_live = time.time()
            enqueued: dict[str, float] = {}
            ids = []  # the enqueued jobs' ids (enqueue pins each to its ETag)
            for i, k in enumerate(keys[BULK:]):
                ids.append((await producer.enqueue(f"s3://lanes/{k}", batch=f"live-{i}")).job_id)
                enqueued[f"live-{i}"] = time.time()
                await asyncio.sleep(LIVE_GAP_S)
            await producer.wait_for_all(ids, timeout=120)
            t_done = time.time()
            console.print(f"live jobs done; measuring bulk for {AFTER_S:.0f} s more…")
            await asyncio.sleep(AFTER_S)
            t_end = time.time()
        finally:
            procs.stop()
            await redis.aclose()
        log = [c for c in sim_stats(stack)["log"] if c["path"] == CALL]
    first_call: dict[str, float] = {}
    for c in sorted(log, key=lambda c: c["t"]):
        first_call.setdefault(c["tag"], c["t"])
    waits = sorted(first_call[tag] - t0 for tag, t0 in enqueued.items() if tag in first_call)
    bulk_calls = [c["t"] for c in log if c["tag"] == "backfill"]
    p95 = waits[max(0, round(0.95 * len(waits)) - 1)]
    t = Table(
        title=f"lanes: {BULK} bulk queued, {LIVE} live arriving every {LIVE_GAP_S} s ({RPM} RPM key)"
    )
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row("live wait enqueue -> call, p50", f"{statistics.median(waits):.2f} s")
    t.add_row("live wait enqueue -> call, p95", f"{p95:.2f} s")
    t.add_row("live wait, max", f"{waits[-1]:.2f} s")
    t.add_row("bulk rate before live (last 30 s)", rate(bulk_calls, t_live - 30, t_live))
    t.add_row("bulk rate during live", rate(bulk_calls, t_live, t_done))
    t.add_row("bulk rate after live", rate(bulk_calls, t_done + 5, t_end))
    t.add_row("429s received", str(sum(1 for c in log if c["status"] == 429)))
    Console(width=200).print(t)


if __name__ == "__main__":
    asyncio.run(main_async())
