"""Backfill benchmark: keys/s listed + enqueued against local S3, and memory over the run.

    python -m tests.bench.backfill [N]      (default 100_000 objects; part of `make bench`)

Uploads N tiny objects into a SeaweedFS bucket once (the upload is not what is measured), then
runs the real `Backfill` (paginated listing, filters, pipelined deduplicated enqueue, checkpoint)
and prints listing+enqueue throughput and the process RSS sampled at every progress tick.
"""

from __future__ import annotations

import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from infra.stack import LocalStack
from producers.backfill import Backfill, BackfillPlan, BackfillStats, Filters
from worker.settings import Settings
from worker.storage import make_s3_client

console = Console(stderr=True)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * 4096 / 1e6


def upload(stack: LocalStack, bucket: str, n: int) -> float:
    s3 = stack.s3_client()
    s3.create_bucket(Bucket=bucket)
    t0 = time.monotonic()

    def put(i: int) -> None:
        s3.put_object(Bucket=bucket, Key=f"photos/{i // 1000:04d}/img {i:07d}.png", Body=b"x" * 64)

    with ThreadPoolExecutor(32) as pool:
        for done, _ in enumerate(pool.map(put, range(n)), 1):
            if done % 10_000 == 0:
                console.print(f"  uploaded {done:,}/{n:,}")
    return time.monotonic() - t0


async def run_backfill(stack: LocalStack, bucket: str) -> tuple[BackfillStats, list[float]]:
    import os

    os.environ.update(stack.env())
    settings = Settings()
    redis = Redis.from_url(settings.redis.url)
    samples: list[float] = []

    def tick(st: BackfillStats) -> None:
        samples.append(rss_mb())
        if st.listed % 10_000 == 0:
            console.print(
                f"  listed {st.listed:,}  enqueued {st.enqueued:,}  rss {samples[-1]:.0f} MB"
            )

    plan = BackfillPlan(
        source=f"s3://{bucket}/photos/",
        batch="bench",
        filters=Filters(include=["*.png"]),
        max_queue=10_000_000,  # measure listing + enqueue, not the back-pressure wait
    )
    stats = await Backfill(redis, settings, make_s3_client(settings.s3), plan, tick).run()
    await redis.aclose()
    return stats, samples


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with LocalStack(with_simulator=False) as stack:
        console.print(f"uploading {n:,} objects to local S3 (setup, not measured)…")
        up = upload(stack, "bench-src", n)
        console.print(f"measuring backfill of {n:,} keys…")
        t0 = time.monotonic()
        stats, samples = asyncio.run(run_backfill(stack, "bench-src"))
        elapsed = time.monotonic() - t0
    t = Table(title=f"backfill of {n:,} objects (local SeaweedFS + redis-server)")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row("upload (setup)", f"{n / up:,.0f} objects/s")
    t.add_row("listed", f"{stats.listed:,}")
    t.add_row("enqueued", f"{stats.enqueued:,}")
    t.add_row("listed + enqueued", f"{stats.listed / elapsed:,.0f} keys/s ({elapsed:.1f} s)")
    quarter = max(1, len(samples) // 4)
    t.add_row("RSS after first 25 %", f"{max(samples[:quarter]):.0f} MB")
    t.add_row("RSS peak (whole run)", f"{max(samples):.0f} MB")
    Console(width=200).print(t)


if __name__ == "__main__":
    main()
