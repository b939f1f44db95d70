"""Real faults against real processes, at default settings, judged by the simulator's bill and
by S3 (never by the project's own word). Shared by `tests/integration/test_faults.py` and
`make chaos`.

A scenario: N distinct images, P `upscale worker` processes kept at P by a supervisor (a
killed one is replaced, as systemd or Kubernetes would), one fault, then wait until every job
is final. The report counts what a user would: time to all-final, jobs stranded, images paid
twice, images paid but not stored, outputs per job, ledger spend against the bill.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from PIL import Image

from infra.stack import LocalStack
from producers.api import Producer
from tests.support import HTTP_TIMEOUT_S
from worker.contract import JobState
from worker.keys import ARQ_RETRY_PREFIX, QUEUES, Keys, first_of
from worker.ledger import JobRecord

Fault = Callable[["Run"], Awaitable[None]]


def noise_png(side: int = 128) -> bytes:
    """A distinct image each time (random pixels), ~4 download chunks once upscaled."""
    import io

    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Run:
    """What a fault can act on while a scenario runs."""

    stack: LocalStack
    sim: httpx.AsyncClient
    producer: Producer
    procs: list[subprocess.Popen[bytes]]
    start_worker: Callable[[], subprocess.Popen[bytes]]
    job_ids: list[str]
    notes: dict[str, Any] = field(default_factory=dict)
    stopped: dict[int, float] = field(default_factory=dict)  # pid -> when SIGSTOPped

    async def sim_stats(self) -> dict[str, Any]:
        r = await self.sim.get("/_admin/stats")
        data: dict[str, Any] = r.json()
        return data

    async def until(
        self, cond: Callable[[], Awaitable[bool]], timeout: float = 60, every: float = 0.02
    ) -> None:
        async with asyncio.timeout(timeout):
            while not await cond():
                await asyncio.sleep(every)

    def kill_worker(self) -> None:
        """SIGKILL one live worker and start its replacement (the supervisor's job)."""
        live = [p for p in self.procs if p.poll() is None]
        victim = random.choice(live)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        self.procs.append(self.start_worker())

    def kill_workers(self) -> None:
        """SIGKILL every live worker and start as many replacements. Which process claimed
        which job cannot be seen from outside (one may have claimed them all): killing them
        all is how the one holding the jobs surely dies."""
        live = [p for p in self.procs if p.poll() is None]
        for victim in live:
            victim.send_signal(signal.SIGKILL)
        for victim in live:
            victim.wait(10)
        self.procs.extend(self.start_worker() for _ in live)

    def stall(self, victim: subprocess.Popen[bytes]) -> None:
        """SIGSTOP a worker: a GC pause, a frozen VM, a swapping host."""
        victim.send_signal(signal.SIGSTOP)
        self.stopped[victim.pid] = time.monotonic()

    def wake(self, victim: subprocess.Popen[bytes], event: str) -> None:
        """SIGCONT a stalled worker; notes how long it was stopped and on which event it woke."""
        victim.send_signal(signal.SIGCONT)
        stopped_s = time.monotonic() - self.stopped.pop(victim.pid)
        self.notes.setdefault("stalls", []).append((event, round(stopped_s, 1)))

    def live(self) -> list[subprocess.Popen[bytes]]:
        """Workers running and not stalled."""
        return [p for p in self.procs if p.poll() is None and p.pid not in self.stopped]

    async def records(self) -> list[JobRecord]:
        return await self.producer.ledger.get_many(self.job_ids)

    async def unstored(self) -> int:
        """Jobs not final yet (their output not stored)."""
        recs = [await self.producer.status(j) for j in self.job_ids]
        return sum(1 for r in recs if r is None or not r.final)


@dataclass
class Report:
    fault: str
    jobs: int
    all_final_s: float | None
    stranded: int
    failed: int
    paid_twice: int
    paid_not_stored: int
    bad_outputs: int
    billed_usd: float
    ledger_usd: float
    bought_after_answer: int
    workers_exited: int
    # outputs whose content changed after it was first written (another call's result), and
    # outputs written again unchanged (the same paid result stored twice); None: not known (the
    # destination bucket is not versioned)
    replaced: int | None = None
    rewritten: int | None = None
    keys_left: int = 0  # keys of final jobs with no TTL, or indexes still listing them
    reclaims: int = 0
    notes: dict[str, Any] = field(default_factory=dict)  # what the fault noted (`Run.notes`)
    records: list[JobRecord] = field(default_factory=list, repr=False)

    def row(self) -> list[str]:
        final = f"{self.all_final_s:.0f} s" if self.all_final_s is not None else "not reached"
        return [
            self.fault,
            str(self.jobs),
            final,
            str(self.stranded),
            str(self.failed),
            str(self.paid_twice),
            str(self.paid_not_stored),
            "-" if self.replaced is None else f"{self.replaced} ({self.rewritten} rewritten)",
            str(self.keys_left),
            f"{self.ledger_usd:.2f} / {self.billed_usd:.2f}",
        ]


async def scenario(
    stack: LocalStack,
    producer: Producer,
    *,
    name: str,
    src_bucket: str,
    dest_bucket: str,
    start_worker: Callable[[], subprocess.Popen[bytes]],
    jobs: int,
    procs: int,
    fault: Fault,
    sim_config: dict[str, Any] | None = None,
    deadline_s: float = 120,
    versioned: bool = False,
) -> Report:
    """`versioned`: the destination bucket keeps every write of an output, so the report
    counts outputs replaced."""
    s3 = stack.s3_client()
    if versioned:
        status = {"Status": "Enabled"}
        s3.put_bucket_versioning(Bucket=dest_bucket, VersioningConfiguration=status)
    async with httpx.AsyncClient(base_url=stack.simulator_url, timeout=HTTP_TIMEOUT_S) as sim:
        if sim_config:
            (await sim.post("/_admin/config", json=sim_config)).raise_for_status()
        images: dict[str, str] = {}  # job id -> dest key
        shas: dict[str, str] = {}  # job id -> fingerprint of its image (as the simulator logs it)
        ids: list[str] = []
        for i in range(jobs):
            key = f"f{i:04d}.png"
            data = noise_png()
            s3.put_object(Bucket=src_bucket, Key=key, Body=data)
            res = await producer.enqueue(f"s3://{src_bucket}/{key}")
            ids.append(res.job_id)
            images[res.job_id] = f"f{i:04d}@2x.png"
            shas[res.job_id] = hashlib.sha256(data).hexdigest()[:16]
        t0 = time.monotonic()
        run = Run(stack, sim, producer, [start_worker() for _ in range(procs)], start_worker, ids)
        all_final: float | None = None  # also when the fault itself timed out
        try:
            await fault(run)
            async with asyncio.timeout(deadline_s):
                while True:
                    recs = [await producer.status(j) for j in ids]
                    if all(r is not None and r.final for r in recs):
                        all_final = time.monotonic() - t0
                        break
                    await asyncio.sleep(0.25)
        except TimeoutError:
            pass
        finally:
            exited = sum(
                1 for p in run.procs if p.poll() is not None and p.returncode != -signal.SIGKILL
            )
            for p in run.procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
                    p.wait(10)
        stats = (await sim.get("/_admin/stats")).json()
    records = [r for j in ids if (r := await producer.status(j)) is not None]
    report = _judge(name, s3, dest_bucket, records, images, shas, stats, all_final, exited)
    if versioned:
        writes = [output_writes(s3, r.dest) for r in records if r.dest]
        report.replaced = sum(1 for w in writes if len(set(w)) > 1)
        report.rewritten = sum(1 for w in writes if len(w) > len(set(w)) == 1)
    final = [r for r in records if r.final]
    report.keys_left = sum([len(await keys_without_ttl(producer.redis, r)) for r in final])
    report.reclaims = sum(r.reclaims for r in records)
    report.notes = run.notes
    return report


def _judge(
    name: str,
    s3: Any,
    dest_bucket: str,
    records: list[JobRecord],
    images: dict[str, str],
    shas_by_job: dict[str, str],
    stats: dict[str, Any],
    all_final: float | None,
    exited: int,
) -> Report:
    listed = s3.list_objects_v2(Bucket=dest_bucket).get("Contents", [])
    stored = Counter(o["Key"] for o in listed)
    bills = Counter(b["image_sha"] for b in stats["bills"])
    paid_not_stored = sum(
        1 for r in records if bills.get(shas_by_job[r.job_id], 0) and not stored[images[r.job_id]]
    )
    # a billed call that arrived after a billed answer for the same image had been sent back
    answered: dict[str, float] = {}
    for c in sorted(stats["log"], key=lambda c: c["t_end"]):
        if c["status"] == 200 and c["image_sha"]:
            answered.setdefault(c["image_sha"], c["t_end"])
    bought_after = sum(
        1
        for b in stats["bills"]
        if b["image_sha"] in answered and b["t"] > answered[b["image_sha"]] + 0.5
    )
    return Report(
        fault=name,
        jobs=len(images),
        all_final_s=all_final,
        stranded=sum(1 for r in records if not r.final) + len(images) - len(records),
        failed=sum(1 for r in records if r.state == JobState.FAILED),
        paid_twice=sum(1 for n in bills.values() if n > 1),
        paid_not_stored=paid_not_stored,
        bad_outputs=sum(1 for r in records if stored[images[r.job_id]] != 1),
        billed_usd=float(stats["billed_usd"]),
        ledger_usd=round(sum(r.spend_usd for r in records), 6),
        bought_after_answer=bought_after,
        workers_exited=exited,
        records=records,
    )


def output_writes(s3: Any, dest_uri: str) -> list[tuple[str, str]]:
    """What each write of an output stored, oldest first: its ETag and the request id of the
    call whose result it is (`upscale-request-id`)."""
    return [
        (v["ETag"], v["Metadata"].get("upscale-request-id", ""))
        for v in output_versions(s3, dest_uri)
    ]


def output_versions(s3: Any, dest_uri: str) -> list[dict[str, Any]]:
    """Every write of an output in a versioned bucket, oldest first, each with its metadata:
    a second one is an output replaced."""
    bucket, _, key = dest_uri.removeprefix("s3://").partition("/")
    listed = s3.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", [])
    mine = sorted((v for v in listed if v["Key"] == key), key=lambda v: v["LastModified"])
    return [
        {
            **v,
            "Metadata": s3.head_object(Bucket=bucket, Key=key, VersionId=v["VersionId"])[
                "Metadata"
            ],
        }
        for v in mine
    ]


async def keys_without_ttl(redis: Any, rec: JobRecord) -> list[str]:
    """What a final job leaves in Redis for good: its keys (`worker/keys.py` names) with no
    TTL, and the fleet's indexes still listing it. Only the record itself may stay, and only
    while it holds money (a call possibly billed) or waits for its batch's report."""
    job = rec.job_id
    kept = rec.possible_usd > 0 or rec.batch is not None
    left: list[str] = []
    for key in (
        Keys.job(job),
        Keys.paid(job),
        Keys.call(job),
        Keys.arq_job(job),
        Keys.arq_in_progress(job),
        ARQ_RETRY_PREFIX + job,
    ):
        if await redis.pttl(key) == -1 and not (key == Keys.job(job) and kept):
            left.append(key)
    queues = [q for queue in QUEUES.values() for q in (queue, first_of(queue))]
    for index in (
        Keys.runs,
        Keys.active,
        Keys.live_waiting,
        Keys.waiting_line,
        Keys.waiting_seen,
        *queues,
    ):
        if await redis.zscore(index, job) is not None:
            left.append(f"{index} (lists it)")
    return left


# -- the faults ------------------------------------------------------------------------------
async def in_flight(run: Run) -> None:
    """Wait until the upstream has calls running."""

    async def calls() -> bool:
        return int((await run.sim_stats())["inflight"]) > 0

    await run.until(calls)


async def answers_saved(run: Run) -> None:
    """Wait until every job's paid answer is saved in the ledger, the simulator billed exactly
    those calls, and no call is anywhere in the simulator (every call that arrived has been
    answered): a kill now can lose no call, only the work after the answer."""

    async def saved() -> bool:
        recs = [await run.producer.status(j) for j in run.job_ids]
        stats = await run.sim_stats()
        return (
            all(r is not None and r.billed_calls >= 1 for r in recs)
            and sum(r.billed_calls for r in recs if r is not None) == stats["billed_calls"]
            and stats["inflight"] == 0
            and stats["calls"] == len(stats["log"])
        )

    await run.until(saved)


def _tcp_established() -> list[list[str]]:
    """The machine's established TCP connections, as /proc/net/tcp{,6} columns (Linux)."""
    rows: list[list[str]] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows += [row.split() for row in f.read().splitlines()[1:]]
        except OSError:
            continue
    return [cols for cols in rows if cols[3] == "01"]  # 01: ESTABLISHED


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


def requests_waiting(port: int) -> int:
    """Connections to a local server on `port` holding request bytes it has not read: with
    the server stopped (SIGSTOP), each is a client blocked on a request (Linux /proc)."""
    return sum(
        1 for c in _tcp_established() if _port(c[1]) == port and int(c[4].split(":")[1], 16) > 0
    )


def connections_to(pid: int, port: int) -> int:
    """Connections process `pid` holds to a local server on `port` (Linux /proc): a worker's
    calls at the simulator (before any call ended, none is an idle kept-alive one)."""
    sockets = set()
    with contextlib.suppress(OSError):  # the process ended meanwhile
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    sockets.add(target[len("socket:[") : -1])
    return sum(1 for c in _tcp_established() if _port(c[2]) == port and c[9] in sockets)


async def s3_request_hangs(run: Run) -> None:
    """With S3 frozen: wait until a worker's request to it hangs there, unread."""

    async def hanging() -> bool:
        return requests_waiting(run.stack.s3_port) > 0

    await run.until(hanging)


async def redis_restart(run: Run) -> None:
    """SIGKILL redis-server mid-call; it comes back on its AOF 3 s later."""
    await in_flight(run)
    run.stack.kill_redis()
    await asyncio.sleep(3)
    run.stack.start_redis()


async def s3_down_20s(run: Run) -> None:
    await in_flight(run)
    run.stack.stop_s3()
    await asyncio.sleep(20)
    run.stack.start_s3()


async def nothing(run: Run) -> None:
    return None


# -- stalls past the run lease (SIGSTOP) ---------------------------------------------------------
async def busiest(run: Run, among: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """Of `among`, the worker with the most connections to the simulator, once one has any:
    which process holds which job cannot be seen from outside, its calls can."""
    port = run.stack.sim_port
    found: list[subprocess.Popen[bytes]] = []

    async def holding() -> bool:
        counts = {p: connections_to(p.pid, port) for p in among if p.poll() is None}
        found[:] = sorted((p for p, n in counts.items() if n), key=lambda p: -counts[p])
        return bool(found)

    await run.until(holding)
    return found[0]


async def three_stalls(run: Run) -> None:
    """Three workers stopped mid-call for longer than the run lease while the others reclaim and
    redo their jobs, each woken on its own event: the first as its jobs are reclaimed (before
    or as the newer runs start), the second while the newer runs' calls are in flight, the
    third once every job is final. Then waits until the ledger has counted every billed call.
    Needs more jobs than one worker runs at once (two workers hold calls)."""
    port = run.stack.sim_port

    async def two_hold_calls() -> bool:
        return sum(1 for p in run.live() if connections_to(p.pid, port)) >= 2

    await run.until(two_hold_calls)
    first = await busiest(run, run.live())
    second = await busiest(run, [p for p in run.live() if p is not first])
    run.stall(first)
    run.stall(second)
    others = run.live()  # never stalled: they reclaim

    async def reclaimed() -> bool:
        return any(r.reclaims for r in await run.records())

    await run.until(reclaimed, every=0.1)
    calls_then = int((await run.sim_stats())["calls"])
    run.wake(first, "its jobs reclaimed")

    async def newer_calls() -> bool:
        stats = await run.sim_stats()
        return int(stats["calls"]) > calls_then and int(stats["inflight"]) > 0

    await run.until(newer_calls)
    third = await busiest(run, others)
    run.wake(second, "newer calls in flight")
    run.stall(third)

    async def all_final() -> bool:
        recs = await run.records()
        return len(recs) == len(run.job_ids) and all(r.final for r in recs)

    await run.until(all_final, timeout=120, every=0.25)
    run.wake(third, "every job final")

    async def settled() -> bool:
        stats = await run.sim_stats()
        billed = sum(r.billed_calls for r in await run.records())
        return billed == int(stats["billed_calls"]) and int(stats["inflight"]) == 0

    await run.until(settled, every=0.25)
