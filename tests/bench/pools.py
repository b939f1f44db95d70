"""Pools benchmark (`make bench`): two upstream keys as one fleet, at default settings.

- 240 jobs on two keys at 60 RPM each (a plain rolling window, and the 2x/10 s burst rule,
  learned), latency 0.3-1 s, 4 processes: wall time against the optimum the two windows allow
  (and what one key alone would need), 429s, calls per key;
- the preferred key's wallet emptying mid-run, on the same two keys at 60 RPM (default
  settings, and evenly paced) and on two unlimited keys (~250 calls/s): every job succeeds on
  the other key; printed: the calls that reached the empty wallet after its first 402.
Judged from the simulator's log and bill.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from infra.stack import LocalStack
from producers.api import Producer
from tests.bench.flow import CALL, run_fleet, sim_admin, sim_stats, upload
from tests.bench.pacing import optimum_s
from worker.api import JobSpec
from worker.keys import Keys

console = Console(stderr=True)
WORKERS = 4
KEY_A, KEY_B = "bench-key-aaaa", "bench-key-bbbb"


def pool(rpm: int) -> str:
    return json.dumps(
        [
            {"name": "key-a", "api_key_env": "BENCH_KEY_A", "rpm": rpm},
            {"name": "key-b", "api_key_env": "BENCH_KEY_B", "rpm": rpm},
        ]
    )


async def run(
    stack: LocalStack,
    bucket: str,
    keys: list[str],
    rpm: int,
    sim: dict[str, Any],
    marks: dict[str, float] | None = None,
    extra_env: dict[str, str] | None = None,
) -> float:
    """Wall time to all final; `marks["key-a paused"]`: when the fleet recorded key-a's pause
    (Unix time, Redis's clock: this machine's, as the simulator's log)."""
    sim_admin(stack, "/_admin/reset")
    base: dict[str, Any] = {
        "wallet_usd": None,
        "wallets_usd": {},
        "fault_500_rate": 0,
        "fault_503_rate": 0,
    }
    sim_admin(stack, "/_admin/config", {**base, "burst_window_s": 10.0, **sim})
    env = {
        "UPSCALE_UPSTREAMS": pool(rpm),
        "BENCH_KEY_A": KEY_A,
        "BENCH_KEY_B": KEY_B,
        "UPSCALE_IMAGE_MODE": "data_url",
        **(extra_env or {}),
    }

    async def pause_time(producer: Producer, _: list[JobSpec]) -> None:
        since = await producer.redis.hget(Keys.up("key-a").pause, "since")  # type: ignore[misc]  # redis-py's stubs
        if marks is not None and since is not None:
            marks["key-a paused"] = int(since) / 1000

    wall, _ = await run_fleet(stack, bucket, keys, env, inspect=pause_time)
    return wall


def per_key(rows: list[dict[str, Any]], field: str = "key_suffix") -> str:
    a = sum(1 for r in rows if r.get(field) == KEY_A[-4:])
    b = sum(1 for r in rows if r.get(field) == KEY_B[-4:])
    return f"{a} / {b}"


async def main_async() -> None:
    rate = Table(
        title=f"pools: two keys at 60 RPM each, ours at default settings, {WORKERS} processes"
    )
    for col in ("upstream rule", "jobs", "wall", "vs optimum", "one key alone (optimum)", "429s",
                "calls key-a / key-b", "upscaled"):  # fmt: skip
        rate.add_column(col)
    with LocalStack() as stack:
        jobs = 240
        latency = [300, 1000]
        rules = (("rolling 60 s window", None), ("2x/10 s burst (learned)", 2.0))
        for i, (rule, burst) in enumerate(rules):
            console.print(f"pools: {jobs} jobs, {rule}…")
            keys = upload(stack, f"pools{i}", jobs)  # fresh sources: no output exists yet
            sim: dict[str, Any] = {
                "api_keys": {KEY_A: 60, KEY_B: 60},
                "burst_factor": burst,
                "latency_ms": latency,
            }
            wall = await run(stack, f"pools{i}", keys, 60, sim)
            stats = sim_stats(stack)
            log = [c for c in stats["log"] if c["path"] == CALL]
            opt = optimum_s(jobs, 120, burst, latency)
            alone = optimum_s(jobs, 60, burst, latency)
            rate.add_row(
                rule,
                str(jobs),
                f"{wall:.1f} s",
                f"{wall / opt:.2f}x (optimum {opt:.0f} s)",
                f"{alone:.0f} s",
                str(sum(1 for c in log if c["status"] == 429)),
                per_key(log),
                f"{stats['billed_calls']}/{jobs}",
            )
        Console(width=200).print(rate)

        wallet = Table(title="pools: one wallet empties mid-run (key-a preferred)")
        for col in ("keys", "key-a's wallet", "jobs", "wall", "upscaled", "billed key-a / key-b",
                    "402s", "first 402 answered -> pause recorded",
                    "calls into key-a after the first 402 answer",
                    "... after the pause was recorded"):  # fmt: skip
            wallet.add_column(col)
        # The pool (two keys at 60 RPM), at default settings: a rolling window without a
        # burst rule lets 60 calls go at once, and the wallet empties inside that burst. Then the
        # same with even pacing (a setting), and unlimited keys at about 250 calls/s.
        even = {"UPSCALE_RATE_BURST_FACTOR": "1"}
        for label, rpm, jobs, images, latency, extra in (
            ("2 x 60 RPM", 60, 100, 40, [300, 1000], {}),
            ("2 x 60 RPM, UPSCALE_RATE_BURST_FACTOR=1", 60, 100, 40, [300, 1000], even),
            ("2 x unlimited", 1_000_000, 200, 40, [100, 400], {}),
        ):
            console.print(f"pools: {jobs} jobs on {label}, key-a's wallet empties after {images}…")
            sim = {
                "api_keys": {KEY_A: rpm, KEY_B: rpm},
                "burst_factor": None,
                "latency_ms": latency,
                "wallets_usd": {KEY_A: images * 0.06},
            }
            bucket = f"pools-wallet-{rpm}-{len(extra)}"
            keys = upload(stack, bucket, jobs)
            marks: dict[str, float] = {}
            wall = await run(stack, bucket, keys, rpm, sim, marks, extra)
            stats = sim_stats(stack)
            log = [c for c in stats["log"] if c["path"] == CALL]
            refused = [c for c in log if c["status"] == 402]
            first = min((c["t_end"] for c in refused), default=float("inf"))
            on_a = [c for c in log if c["key_suffix"] == KEY_A[-4:]]
            after = [c["t"] - first for c in on_a if c["t"] > first]
            known = marks.get("key-a paused", float("inf"))
            wallet.add_row(
                label,
                f"{images} images",
                str(jobs),
                f"{wall:.1f} s",
                f"{stats['billed_calls']}/{jobs}",
                per_key(stats["bills"], "key"),
                str(len(refused)),
                f"{(known - first) * 1000:.0f} ms",
                f"{len(after)} (all within {max(after, default=0) * 1000:.0f} ms)",
                str(sum(1 for c in on_a if c["t"] > known)),
            )
        Console(width=200).print(wallet)
        console.print(
            "  calls reaching key-a after its first 402 were sent in the same burst, within "
            "the 402's way back; one after the pause was recorded was journaled before it "
            "(call_begin refuses a paused key's calls in the same script that journals them)"
        )
    console.print(
        "targets: two keys at 60 RPM finish 240 jobs in ~2 min with 0 x 429; after one key's "
        "402, 0 calls into its wallet and every job done on the other"
    )


def main() -> None:
    asyncio.run(main_async())


if __name__ == "__main__":
    main()
