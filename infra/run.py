"""`make run` / `upscale run`: the main job on the embedded default, end to end.

With no REDIS_URL in the environment it starts the local stack (redis-server, SeaweedFS S3,
the gateway simulator), uploads generated sample images, enqueues them, runs a worker until
the batch is done, prints a summary and stops the stack. With REDIS_URL / UPSCALE_S3_* /
UPSCALE_GATEWAY_URL set it runs against those instead (and leaves them running).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from PIL import Image, ImageDraw
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from producers.api import Producer, build_spec
from worker.app import build_worker
from worker.contract import JobState, Keys
from worker.settings import Settings, get_settings
from worker.storage import make_s3_client

console = Console(stderr=True)
INPUT_BUCKET = "upscale-demo"


def sample_images(n: int) -> Iterator[tuple[str, bytes, str]]:
    """Small, varied, real images: gradients and shapes in PNG, JPEG and WebP."""
    formats = [
        ("PNG", "png", "image/png"),
        ("JPEG", "jpg", "image/jpeg"),
        ("WEBP", "webp", "image/webp"),
    ]
    for i in range(n):
        fmt, ext, ctype = formats[i % len(formats)]
        w, h = 160 + 32 * i, 120 + 24 * i
        img = Image.new("RGB", (w, h))
        draw = ImageDraw.Draw(img)
        for y in range(h):
            draw.line(
                [(0, y), (w, y)], fill=(40 + 180 * y // h, 90 + 20 * i % 160, 200 - 150 * y // h)
            )
        draw.ellipse([w // 4, h // 4, 3 * w // 4, 3 * h // 4], outline=(255, 255, 255), width=3)
        draw.text((8, 8), f"sample {i + 1}", fill=(255, 255, 0))
        buf = io.BytesIO()
        img.save(buf, fmt)
        # Keys with spaces and '+' on purpose: they are opaque strings end to end.
        yield f"samples/photo {i + 1}+demo.{ext}", buf.getvalue(), ctype


async def run_batch(settings: Settings, n_images: int) -> int:
    s3 = make_s3_client(settings.s3)
    for bucket in (INPUT_BUCKET, f"{INPUT_BUCKET}-upscaled"):
        with contextlib.suppress(
            s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists
        ):
            s3.create_bucket(Bucket=bucket)
    keys = []
    for key, data, ctype in sample_images(n_images):
        s3.put_object(Bucket=INPUT_BUCKET, Key=key, Body=data, ContentType=ctype)
        keys.append(key)
    batch = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    console.print(
        f"uploaded {len(keys)} sample images to s3://{INPUT_BUCKET}/samples/ — batch [bold]{batch}[/]"
    )

    async with Producer.connect(settings, fail_fast=True) as producer:
        heads = [s3.head_object(Bucket=INPUT_BUCKET, Key=k) for k in keys]
        specs = [
            build_spec(
                f"s3://{INPUT_BUCKET}/{k}",
                etag=h["ETag"],
                batch=batch,
                prompt="crisp details" if i % 2 else None,
                settings=settings,
            )
            for i, (k, h) in enumerate(zip(keys, heads, strict=True))
        ]
        results = await producer.enqueue_specs(specs)
        job_ids = [r.job_id for r in results]
        worker = build_worker(settings, burst=True, handle_signals=False)
        worker_task = asyncio.create_task(worker.async_run())
        try:
            await _progress(producer, batch, len(job_ids), worker_task)
        finally:
            if not worker_task.done():
                worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker_task
            await worker.close()
        return await _summary(producer, job_ids, batch, s3)


async def _progress(
    producer: Producer, batch: str, total: int, worker_task: asyncio.Task[Any]
) -> None:
    columns = [
        TextColumn("[bold]upscaling"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[states]}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("jobs", total=total, states="")
        while True:
            summary = await producer.ledger.batch_summary(batch)
            states = summary["states"]
            done = sum(states.get(s.value, 0) for s in JobState if s.final)
            shown = "  ".join(f"{k}={v}" for k, v in states.items() if v)
            bar.update(task, completed=done, states=f"{shown}  ${summary['spend_usd']:.2f}")
            if done >= total:
                return
            if worker_task.done():
                worker_task.result()  # surface a crashed worker
                return
            await asyncio.sleep(0.25)


def _output_resolution(s3: Any, dest: str) -> str:
    """The stored output's size, from its S3 metadata (a final record keeps only where it is)."""
    bucket, _, key = dest.removeprefix("s3://").partition("/")
    try:
        return str(
            s3.head_object(Bucket=bucket, Key=key)["Metadata"].get("upscale-resolution", "?")
        )
    except Exception:  # a summary line, not a check: "?" says it
        return "?"


async def _summary(producer: Producer, job_ids: list[str], batch: str, s3: Any) -> int:
    table = Table(title=f"batch {batch}")
    for col in ("source", "state", "output", "resolution", "cost", "reason"):
        table.add_column(col, overflow="fold")
    failed = 0
    for job_id in job_ids:
        rec = await producer.status(job_id)
        if rec is None:
            continue
        failed += rec.state != JobState.SUCCEEDED
        res = await producer.redis.hget(Keys.job(job_id), "source_resolution")  # type: ignore[misc]
        src_res = res.decode() if isinstance(res, bytes) else (res or "?")
        table.add_row(
            rec.source,
            rec.state,
            rec.dest,
            f"{src_res} -> {_output_resolution(s3, rec.dest) if rec.dest else '?'}",
            f"${rec.cost_usd:.2f}",
            rec.error or "",
        )
    out = Console() if sys.stdout.isatty() else Console(width=160)  # logs and CI: no wrapping
    out.print(table)
    spend = await producer.ledger.spend()
    summary = await producer.ledger.batch_summary(batch)
    states = ", ".join(f"{n} {k}" for k, n in summary["states"].items() if n)
    out.print(
        f"[bold]{len(job_ids)} jobs: {states}. Batch spend ${summary['spend_usd']:.2f} "
        f"(total ${spend['total_usd']:.2f}).[/]"
    )
    return 1 if failed else 0


def main(images: int = 6) -> int:
    external = bool(os.environ.get("REDIS_URL") or os.environ.get("UPSCALE_REDIS_URL"))
    if external:
        console.print(
            "using the services from the environment (REDIS_URL, UPSCALE_S3_*, UPSCALE_GATEWAY_URL)"
        )
        return asyncio.run(run_batch(get_settings(), images))

    from infra.stack import LocalStack

    os.environ.setdefault("UPSCALE_LOG_LEVEL", "WARNING")  # keep the progress bar readable
    t0 = time.monotonic()
    console.print("starting the local stack (redis-server, SeaweedFS S3, gateway simulator)…")
    with LocalStack() as stack:
        console.print(
            f"stack up in {time.monotonic() - t0:.1f}s: redis {stack.redis_url}, S3 {stack.s3_endpoint}, upstream {stack.simulator_url}"
        )
        os.environ.update(stack.env())
        # Read now, with the stack's environment (whatever the CLI read before it started).
        code = asyncio.run(run_batch(Settings(), images))
    console.print("local stack stopped")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
