"""Flow-control benchmark (`make bench`): our workers vs a naive arq baseline, side by side.

Scenario A (throughput): the simulator enforces 600 RPM with a 2x/10 s burst and answers in
1-3 s; 4 worker processes per side; enough jobs to fill more than one rolling minute.
Scenario B (402 mid-run): the wallet pays for ~40 images, then every call is a 402.

Figures (from the simulator's own call log, not from the workers):
- busiest 60 s: most calls started in any rolling 60 s window, as % of the 600 RPM limit
  (100 % is the ceiling a polite client can reach; more is impossible without 429s);
- 429s received; calls that arrived after the first 402 had been answered; wall time.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from arq.connections import ArqRedis, RedisSettings, create_pool
from PIL import Image
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from infra.stack import LocalStack, die_with_parent
from producers.api import Producer, build_spec
from tests.bench.naive import DONE, QUEUE
from worker.api import JobSpec, JobState
from worker.keys import Keys, queue_for
from worker.settings import Settings

RPM = 600
WORKERS = 4
JOBS_A = int(os.environ.get("BENCH_JOBS", "700"))
JOBS_B = 100
WALLET_IMAGES = 40
console = Console(stderr=True)
CALL = "/v1/images/generations"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def sim_admin(stack: LocalStack, path: str, body: dict[str, Any] | None = None) -> Any:
    r = httpx.post(stack.simulator_url + path, json=body or {}, timeout=10)
    r.raise_for_status()
    return r.json()


def sim_stats(stack: LocalStack) -> dict[str, Any]:
    r = httpx.get(stack.simulator_url + "/_admin/stats", timeout=30)
    r.raise_for_status()
    data: dict[str, Any] = r.json()
    return data


def reset(stack: LocalStack, wallet: float | None) -> None:
    sim_admin(stack, "/_admin/reset")
    sim_admin(
        stack,
        "/_admin/config",
        {
            "api_keys": {stack.api_key: RPM},
            "burst_factor": 2.0,
            "burst_window_s": 10.0,
            "latency_ms": [1000, 3000],
            "wallet_usd": wallet,
        },
    )


def upload(stack: LocalStack, bucket: str, n: int) -> list[str]:
    """`n` sample images in `bucket`. Our default destination bucket (`<bucket>-upscaled`) is
    made and written once too, as the naive worker's output prefix lives in `bucket` itself:
    SeaweedFS grows a new bucket's volumes on its first writes, which neither side should pay
    inside the timed run."""
    s3 = stack.s3_client()
    s3.create_bucket(Bucket=bucket)
    s3.create_bucket(Bucket=f"{bucket}-upscaled")
    s3.put_object(Bucket=f"{bucket}-upscaled", Key="warm-up", Body=b"x")
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 30, 200)).save(buf, "PNG")
    keys = [f"bench/{i:05d}.png" for i in range(n)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=buf.getvalue()), keys))
    return keys


def _cpu_of(stat: str) -> tuple[int, float]:
    """(process group, CPU seconds) from the text of `/proc/<pid>/stat`."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[2]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def service_cpu_s(stack: LocalStack) -> dict[str, float]:
    """CPU seconds each of the stack's services (redis, weed, simulator) has used so far, all
    the processes of its group counted: on 2 cores the no-limit rows are CPU-bound, and these
    show where a side's CPU went besides its own workers."""
    groups = {p.pid: name for name, p in stack.procs.items() if p.pid is not None}
    used = dict.fromkeys(groups.values(), 0.0)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            group, cpu = _cpu_of(stat.read_text())
            if group in groups:
                used[groups[group]] += cpu
    return used


class Procs:
    def __init__(self, stack: LocalStack | None = None) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stack = stack  # its services' CPU is marked beside the workers'

    def start(self, argv: list[str], env: dict[str, str], n: int) -> None:
        for _ in range(n):
            self.procs.append(
                subprocess.Popen(
                    argv,
                    env={**os.environ, **env},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
            )

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the live processes have used so far."""
        total = 0.0
        for p in self.procs:
            with contextlib.suppress(OSError):
                total += _cpu_of(Path(f"/proc/{p.pid}/stat").read_text())[1]
        return total

    def mark_cpu(self, when: str, marks: dict[str, float]) -> None:
        """`marks["cpu_at_<when>"]`: the processes' CPU seconds so far; with a stack, also
        `marks["<service>_at_<when>"]` for each of its services."""
        marks[f"cpu_at_{when}"] = self.cpu_s()
        if self.stack is not None:
            marks.update({f"{k}_at_{when}": v for k, v in service_cpu_s(self.stack).items()})

    async def mark_cpu_at(self, unix: float, marks: dict[str, float]) -> None:
        """`mark_cpu("due")` at `unix` (start-up excluded)."""
        await asyncio.sleep(max(0.0, unix - time.time()))
        self.mark_cpu("due", marks)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.procs:
            p.wait(10)
        self.procs.clear()


def ours_env(stack: LocalStack, **extra: Any) -> dict[str, str]:
    env = {
        **stack.env(),
        "UPSCALE_RATE_RPM": str(RPM),
        "UPSCALE_LOG_LEVEL": "WARNING",
        "UPSCALE_LOG_FORMAT": "json",
    }
    env.update({f"UPSCALE_{k.upper()}": str(v) for k, v in extra.items()})
    return env


async def run_ours(stack: LocalStack, keys: list[str], bucket: str, **extra: Any) -> float:
    os.environ.update(stack.env())
    redis = Redis.from_url(stack.redis_url)
    await redis.flushdb()
    producer = Producer(redis, Settings())
    specs = [
        build_spec(f"s3://{bucket}/{k}", batch="bench", settings=producer.settings) for k in keys
    ]
    await producer.enqueue_specs(specs)
    procs = Procs()
    t0 = time.monotonic()
    # this scenario's user knows the upstream's burst rule and sets it (and a larger fleet)
    env = ours_env(
        stack,
        rate_burst_factor=2,
        rate_burst_window_s=10,
        max_inflight=64,
        max_jobs=32,
        **extra,
    )
    procs.start([sys.executable, "-m", "producers.cli", "worker"], env, WORKERS)
    try:
        await _wait(lambda: _ours_final(producer), len(keys), "ours", redis, paused_ok=bool(extra))
    finally:
        procs.stop()
        await redis.aclose()
    return time.monotonic() - t0


async def run_fleet(
    stack: LocalStack,
    bucket: str,
    keys: list[str],
    env: dict[str, str],
    *,
    warm_s: float = 0.0,
    inspect: Callable[[Producer, list[JobSpec]], Awaitable[None]] | None = None,
    marks: dict[str, float] | None = None,
) -> tuple[float, float]:
    """Our side of a run: `keys` of `bucket` enqueued on a flushed Redis, `WORKERS` `upscale
    worker` processes with `env` until every job is final. Returns the wall time from the
    processes' start and the Unix time all were final. `warm_s`: the jobs become due together
    that long after they are enqueued; `inspect` reads the outcome before teardown; `marks`
    gets the processes' CPU seconds when the jobs became due and when all were final."""
    os.environ.update(stack.env())
    redis = Redis.from_url(stack.redis_url)
    await redis.flushdb()
    producer = Producer(redis, Settings())
    # pinned here (enqueue would HEAD them anyway): the ids below are the enqueued jobs'
    specs = await producer.pin_sources(
        [build_spec(f"s3://{bucket}/{k}", settings=producer.settings) for k in keys]
    )
    await producer.enqueue_specs(specs)
    due_at = time.time() + warm_s
    if warm_s:
        await redis.zadd(queue_for("live"), {s.job_id: due_at * 1000 for s in specs}, xx=True)
    env = {**stack.env(), "UPSCALE_LOG_LEVEL": "WARNING", "UPSCALE_LOG_FORMAT": "json", **env}
    procs = Procs(stack)
    t0 = time.monotonic()
    procs.start([sys.executable, "-m", "producers.cli", "worker"], env, WORKERS)
    sampler = asyncio.create_task(procs.mark_cpu_at(due_at, {} if marks is None else marks))
    try:
        while await _ours_final(producer) < len(keys):
            await asyncio.sleep(0.05)
        wall, done_at = time.monotonic() - t0, time.time()
        if marks is not None:
            procs.mark_cpu("done", marks)
        if inspect is not None:
            await inspect(producer, specs)
        return wall, done_at
    finally:
        sampler.cancel()
        procs.stop()
        await redis.aclose()


async def _ours_final(producer: Producer) -> int:
    counts = await producer.ledger.state_counts()
    return sum(counts.get(s, 0) for s in JobState if s.final and s != JobState.CANCELLED)


async def run_naive(
    stack: LocalStack,
    keys: list[str],
    bucket: str,
    stop_at: int = 0,
    marks: dict[str, float] | None = None,
    defer_s: float = 0.0,
) -> float:
    """Wall time from starting the processes to `stop_at` (all) jobs done; `marks["done_at"]`
    gets that moment as a Unix time (to set against the simulator's log). `defer_s`: the jobs
    become due that long after they are enqueued (a warm fleet meets them)."""
    redis = Redis.from_url(stack.redis_url)
    await redis.flushdb()
    pool: ArqRedis = await create_pool(RedisSettings.from_dsn(stack.redis_url))
    due_at = time.time() + defer_s  # the first job's; the last is due a moment later
    for k in keys:
        await pool.enqueue_job(
            "naive_upscale", bucket, k, _queue_name=QUEUE, _defer_by=defer_s or None
        )
    procs = Procs(stack)
    t0 = time.monotonic()
    procs.start(
        [sys.executable, "-m", "arq", "tests.bench.naive.WorkerSettings"], stack.env(), WORKERS
    )

    async def done() -> int:
        return int(await redis.get(DONE) or 0)

    sampler = asyncio.create_task(procs.mark_cpu_at(due_at, {} if marks is None else marks))
    try:
        await _wait(done, stop_at or len(keys), "naive", redis)
        if marks is not None:
            marks["done_at"] = time.time()
            procs.mark_cpu("done", marks)
    finally:
        sampler.cancel()
        procs.stop()
        await pool.aclose()
        await redis.aclose()
    return time.monotonic() - t0


async def _wait(
    final: Any, target: int, label: str, redis: Redis, *, paused_ok: bool = False
) -> None:
    last = 0.0
    while True:
        n = await final()
        if n >= target:
            return
        if paused_ok and await redis.exists(Keys.pause, Keys.up("default").pause):
            await asyncio.sleep(3)  # let in-flight calls land, then stop: the wallet is empty
            return
        if time.monotonic() - last > 5:
            console.print(f"  {label}: {n}/{target} final")
            last = time.monotonic()
        await asyncio.sleep(0.2)


def busiest_minute(starts: list[float]) -> int:
    starts = sorted(starts)
    return max((bisect.bisect_left(starts, t + 60) - i for i, t in enumerate(starts)), default=0)


def throughput_figures(stack: LocalStack, wall: float) -> dict[str, str]:
    log = [c for c in sim_stats(stack)["log"] if c["path"] == CALL]
    ok = [c["t"] for c in log if c["status"] == 200]
    n429 = sum(1 for c in log if c["status"] == 429)
    peak = busiest_minute(ok)
    return {
        "busiest 60 s (% of 600 RPM)": f"{peak} calls = {100 * peak / RPM:.1f} %",
        "429s received": str(n429),
        "upstream calls (all)": str(len(log)),
        "wall time": f"{wall:.1f} s",
    }


def after_402_figures(stack: LocalStack) -> dict[str, str]:
    log = [c for c in sim_stats(stack)["log"] if c["path"] == CALL]
    first = min((c["t_end"] for c in log if c["status"] == 402), default=None)
    after = 0 if first is None else sum(1 for c in log if c["t"] > first)
    return {
        "calls after the first 402": str(after),
        "402s received": str(sum(1 for c in log if c["status"] == 402)),
        "images paid": str(sum(1 for c in log if c["status"] == 200)),
    }


async def main_async() -> None:
    with LocalStack() as stack:
        console.print(f"uploading {JOBS_A} sample images…")
        keys = upload(stack, "bench", JOBS_A)
        results: dict[str, dict[str, str]] = {"ours": {}, "naive": {}}
        for side in ("ours", "naive"):
            console.print(f"[bold]A[/] throughput, {side}: {JOBS_A} jobs, {WORKERS} processes")
            reset(stack, None)
            wall = await (run_ours if side == "ours" else run_naive)(stack, keys, "bench")
            results[side].update(throughput_figures(stack, wall))
        for side in ("ours", "naive"):
            console.print(f"[bold]B[/] wallet empties after {WALLET_IMAGES} images, {side}")
            # fresh objects: A's outputs exist, so ours would rightly skip A's keys unpaid
            bucket = f"bench-b-{side}"
            keys_b = upload(stack, bucket, JOBS_B)
            reset(stack, round(WALLET_IMAGES * 0.06, 2))
            if side == "ours":
                await run_ours(stack, keys_b, bucket, canary_interval_s=0)
            else:
                await _naive_until_quiet(stack, keys_b, bucket)
            results[side].update(after_402_figures(stack))
    table = Table(title=f"flow control: ours vs naive ({WORKERS} processes each, 600 RPM key)")
    table.add_column("figure")
    table.add_column("ours", justify="right")
    table.add_column("naive baseline", justify="right")
    for name in results["ours"]:
        table.add_row(name, results["ours"][name], results["naive"].get(name, ""))
    Console(width=200).print(table)
    console.print(
        "targets for ours: busiest minute >= 97 % of the limit, 0 self-inflicted 429s, "
        "0 calls after a 402"
    )


async def _naive_until_quiet(stack: LocalStack, keys: list[str], bucket: str) -> None:
    """The naive side never pauses: let it hammer the empty wallet for 20 s, then stop it."""
    task = asyncio.create_task(run_naive(stack, keys, bucket))
    await asyncio.sleep(20)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main() -> None:
    asyncio.run(main_async())


if __name__ == "__main__":
    main()
