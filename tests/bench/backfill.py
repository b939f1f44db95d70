"""Backfill benchmark: keys/s of the listing backfill beside the plain boto3 paginator on the
same bucket, keys/s of the manifest backfill beside its target, and memory over the run.

    python -m tests.bench.backfill [N]      (default 100_000 objects; part of `make bench`;
                                             the issue's scale row is N = 200_000)

Uploads N tiny objects into a SeaweedFS bucket once (setup, not measured: ~500 objects/s here),
writes an S3 Inventory report of them (gzipped CSV + manifest.json), then in one process:
the plain `list_objects_v2` paginator, the real `Backfill` over the listing (filters,
pipelined deduplicated enqueue, checkpoint), and the real `Backfill` over the manifest, each on
a flushed Redis. RSS is sampled at every progress tick.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import hashlib
import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from infra.stack import LocalStack
from producers.backfill import Backfill, BackfillPlan, BackfillStats, Filters
from worker.settings import Settings
from worker.storage import make_s3_client

console = Console(stderr=True)
BUCKET = "bench-src"
TARGET_RATIO = 0.85  # listing backfill / paginator
TARGET_MANIFEST = 20_000  # keys/s


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * 4096 / 1e6


def key_of(i: int) -> str:
    return f"photos/{i // 1000:04d}/img {i:07d}.png"


def upload(stack: LocalStack, n: int) -> float:
    s3 = stack.s3_client()
    s3.create_bucket(Bucket=BUCKET)
    t0 = time.monotonic()

    def put(i: int) -> None:
        s3.put_object(Bucket=BUCKET, Key=key_of(i), Body=b"x" * 64)

    with ThreadPoolExecutor(32) as pool:
        for done, _ in enumerate(pool.map(put, range(n)), 1):
            if done % 20_000 == 0:
                console.print(f"  uploaded {done:,}/{n:,}")
    return time.monotonic() - t0


def write_inventory(s3: Any, n: int, etag: str) -> str:
    """An S3 Inventory report (CSV.gz, 4 data files) of the N objects; returns its URI."""
    schema = "Bucket, Key, Size, LastModifiedDate, ETag, IsLatest, IsDeleteMarker"
    files = []
    per = -(-n // 4)
    for part in range(4):
        buf = io.BytesIO()
        with gzip.open(buf, "wt", newline="") as g:
            w = csv.writer(g, quoting=csv.QUOTE_ALL)
            for i in range(part * per, min(n, (part + 1) * per)):
                key = key_of(i).replace(" ", "%20")
                w.writerow([BUCKET, key, 64, "2026-01-01T00:00:00.000Z", etag, "true", "false"])
        body = buf.getvalue()
        key = f"inventory/data/part-{part}.csv.gz"
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        files.append({"key": key, "size": len(body), "MD5checksum": hashlib.md5(body).hexdigest()})
    manifest = {
        "sourceBucket": BUCKET,
        "destinationBucket": f"arn:aws:s3:::{BUCKET}",
        "version": "2016-11-30",
        "fileFormat": "CSV",
        "fileSchema": schema,
        "files": files,
    }
    s3.put_object(Bucket=BUCKET, Key="inventory/manifest.json", Body=json.dumps(manifest))
    return f"s3://{BUCKET}/inventory/manifest.json"


def paginator(settings: Settings) -> tuple[int, float]:
    s3 = make_s3_client(settings.s3)
    t0 = time.monotonic()
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="photos/"):
        n += len(page.get("Contents", []))
    return n, time.monotonic() - t0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_backfill(
    settings: Settings, plan: BackfillPlan
) -> tuple[BackfillStats, float, list[float]]:
    redis = Redis.from_url(settings.redis.url)
    await redis.flushdb()
    samples = [rss_mb()]

    def tick(st: BackfillStats) -> None:
        samples.append(rss_mb())
        if st.listed and st.listed % 50_000 < 1000 and len(samples) % 20 == 0:
            console.print(
                f"  read {st.listed:,}  enqueued {st.enqueued:,}  rss {samples[-1]:.0f} MB"
            )

    t0 = time.monotonic()
    stats = await Backfill(redis, settings, make_s3_client(settings.s3), plan, tick).run()
    elapsed = time.monotonic() - t0
    await redis.aclose()
    return stats, elapsed, samples


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with LocalStack(with_simulator=False) as stack:
        console.print(f"uploading {n:,} objects to local S3 (setup, not measured)…")
        up = upload(stack, n)
        os.environ.update(stack.env())
        settings = Settings()
        s3 = make_s3_client(settings.s3)
        etag = str(s3.head_object(Bucket=BUCKET, Key=key_of(0))["ETag"]).strip('"')
        uri = write_inventory(s3, n, etag)
        console.print("plain paginator…")
        listed, pag_s = paginator(settings)
        common: dict[str, Any] = {
            "filters": Filters(include=["*.png"]),
            "max_queue": 10_000_000,  # measure intake, not the back-pressure wait
            "skip_existing": False,  # measured on its own row below
        }
        console.print("listing backfill…")
        lst, lst_s, lst_rss = asyncio.run(
            run_backfill(settings, BackfillPlan(f"s3://{BUCKET}/photos/", "bench", **common))
        )
        console.print("listing backfill, destination listed (skip existing outputs)…")
        common["skip_existing"] = True
        sk, sk_s, _ = asyncio.run(
            run_backfill(settings, BackfillPlan(f"s3://{BUCKET}/photos/", "bench-s", **common))
        )
        console.print("manifest backfill…")
        redis_pid = stack.procs["redis"].pid or 0
        cpu0, rcpu0 = time.process_time(), cpu_s(redis_pid)
        man, man_s, man_rss = asyncio.run(
            run_backfill(settings, BackfillPlan(uri, "bench-m", manifest=True, **common))
        )
        # CPU per row says what the machine's load hides: on 2 idle cores the producer
        # (reader thread + event loop, one GIL) and redis-server run side by side.
        py_us = (time.process_time() - cpu0) / man.listed * 1e6
        redis_us = (cpu_s(redis_pid) - rcpu0) / man.listed * 1e6
    pag_rate, lst_rate, man_rate = listed / pag_s, lst.listed / lst_s, man.listed / man_s
    t = Table(title=f"backfill scale row: {n:,} objects (local SeaweedFS + redis-server, 2 cores)")
    t.add_column("figure")
    t.add_column("measured", justify="right")
    t.add_column("reference", justify="right")
    t.add_column("ok", justify="center")

    def ok(good: bool) -> str:
        return "[green]yes[/]" if good else "[red]no[/]"

    t.add_row("upload (setup)", f"{n / up:,.0f} objects/s", "", "")
    t.add_row("plain boto3 paginator", f"{pag_rate:,.0f} keys/s", "", "")
    ratio = lst_rate / pag_rate
    t.add_row(
        "listing backfill (list+filter+enqueue)",
        f"{lst_rate:,.0f} keys/s ({ratio:.2f}x)",
        f">= {TARGET_RATIO:.2f}x paginator",
        ok(ratio >= TARGET_RATIO),
    )
    t.add_row(
        "  + destination listed",
        f"{sk.listed / sk_s:,.0f} keys/s ({sk.dest_listed:,} dest_listed)",
        "",
        "",
    )
    t.add_row(
        "manifest backfill (CSV.gz inventory)",
        f"{man_rate:,.0f} keys/s",
        f">= {TARGET_MANIFEST:,} keys/s",
        ok(man_rate >= TARGET_MANIFEST),
    )
    t.add_row(
        "  CPU per row: producer / redis-server",
        f"{py_us:.0f} / {redis_us:.0f} us",
        f"<= {1e6 / TARGET_MANIFEST:.0f} us each",
        ok(max(py_us, redis_us) <= 1e6 / TARGET_MANIFEST),
    )
    t.add_row(
        "enqueued (listing / manifest)",
        f"{lst.enqueued:,} / {man.enqueued:,}",
        f"{n:,}",
        ok(lst.enqueued == man.enqueued == n),
    )
    for name, rss in (("listing", lst_rss), ("manifest", man_rss)):
        quarter = max(1, len(rss) // 4)
        t.add_row(
            f"{name} backfill RSS: start / first 25 % / end",
            f"{rss[0]:.0f} / {max(rss[:quarter]):.0f} / {rss[-1]:.0f} MB",
            "flat",
            ok(rss[-1] - max(rss[:quarter]) < 30),
        )
    Console(width=200).print(t)


if __name__ == "__main__":
    main()
