"""Simulator state: per-key rate windows (`ratelimit.py`), counters, the bill, async jobs and
generations, stored results, the spend counters daily limits read, the clock's offset, the
hold gate and the call log."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from infra.simulator import clock
from infra.simulator.config import SimConfig
from infra.simulator.records import AsyncJob, Bill, Generation

_SIGNING_KEY = secrets.token_bytes(32)


@dataclass
class Gate:
    """Work held in flight while `hold_work` is on: `tokens` let that many through."""

    waiting: int = 0
    tokens: int = 0
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self.event.set()
        self.event = asyncio.Event()


@dataclass
class SimState:
    config: SimConfig
    windows: dict[str, deque[float]] = field(default_factory=dict)
    calls: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    by_tag: Counter[str] = field(default_factory=Counter)
    billed_calls: int = 0
    billed_usd: float = 0.0
    inflight: int = 0
    max_inflight: int = 0
    inflight_by_key: Counter[str] = field(default_factory=Counter)
    inflight_images: Counter[str] = field(default_factory=Counter)  # per organisation
    downloads: int = 0
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=10_000))
    files: dict[str, bytes] = field(default_factory=dict)
    file_times: dict[str, float] = field(default_factory=dict)  # stored at (the sim's clock)
    jobs: dict[str, AsyncJob] = field(default_factory=dict)
    generations: dict[str, Generation] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)  # generations at work
    bill_log: list[Bill] = field(default_factory=list)
    # "<scope>|<period>" -> USD held or billed: what daily limits and spend caps read
    spend: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    polls: int = 0
    poll_log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=10_000))
    poll_windows: dict[str, deque[float]] = field(default_factory=dict)  # per organisation
    clock_offset_s: float = 0.0
    epoch: int = 0  # bumped by reset: work started before it no longer counts
    gate: Gate = field(default_factory=Gate)
    # idempotency key -> finished answer (status, body, headers), and keys in progress
    answers: dict[str, tuple[int, bytes, dict[str, str]]] = field(default_factory=dict)
    answering: dict[str, Any] = field(default_factory=dict)

    def reset(self) -> None:
        self.epoch += 1
        self.windows.clear()
        self.calls = self.billed_calls = self.inflight = self.max_inflight = self.downloads = 0
        self.polls = 0
        self.billed_usd = self.clock_offset_s = 0.0
        for counter in (self.by_status, self.by_tag, self.inflight_by_key, self.inflight_images):
            counter.clear()
        for task in self.tasks:
            task.cancel()
        for coll in (self.log, self.jobs, self.generations, self.tasks, self.bill_log):
            coll.clear()
        for other in (self.spend, self.poll_log, self.poll_windows, self.answers, self.answering):
            other.clear()
        self.gate.tokens = 0
        self.gate.wake()

    def now(self) -> float:
        """The simulator's clock (`clock.py`)."""
        return clock.now(self.clock_offset_s)

    # -- results ----------------------------------------------------------------------------
    def store(self, data: bytes) -> str:
        file_id = secrets.token_hex(12)
        self.files[file_id] = data
        self.file_times[file_id] = self.now()
        while len(self.files) > self.config.max_files:
            self.drop_file(next(iter(self.files)))
        return file_id

    def drop_file(self, file_id: str) -> None:
        self.files.pop(file_id, None)
        self.file_times.pop(file_id, None)

    def file_kept(self, file_id: str) -> bool:
        """Whether a stored file is still kept (`file_retention_s`); an expired one is dropped."""
        stored = self.file_times.get(file_id)
        if stored is not None and self.now() - stored > self.config.file_retention_s:
            self.drop_file(file_id)
        return file_id in self.files

    def signed_path(self, file_id: str) -> str:
        exp = int(self.now()) + self.config.result_url_ttl_s
        return f"/files/{file_id}?exp={exp}&sig={sign(file_id, exp)}"

    def record(
        self,
        path: str,
        status: int,
        key: str,
        arrived: float,
        tag: str = "",
        *,
        image_sha: str = "",
        idem: str = "",
        client_gone: bool = False,
    ) -> None:
        """`t` is when the call arrived, `t_end` when it was answered (both unix seconds);
        `client_gone`: the caller had closed the connection before the answer (it was run)."""
        self.by_status[str(status)] += 1
        self.log.append(
            {
                "t": arrived,
                "t_end": time.time(),
                "path": path,
                "status": status,
                "key_suffix": key[-4:],
                "tag": tag,
                "image_sha": image_sha,
                "idem": idem,
                "client_gone": client_gone,
            }
        )

    def record_poll(self, path: str, status: int, key: str) -> None:
        """Polls (job / generation reads) are logged apart: the call log holds billable calls."""
        self.polls += 1
        self.poll_log.append(
            {"t": time.time(), "path": path, "status": status, "key_suffix": key[-4:]}
        )

    def record_bill(self, bill: Bill) -> None:
        self.billed_calls += 1
        self.billed_usd = round(self.billed_usd + bill.usd, 6)
        self.bill_log.append(bill)

    def stats(self) -> dict[str, Any]:
        """Counters and logs (settle async jobs first: `admin.stats`)."""
        return {
            "calls": self.calls,
            "by_status": dict(self.by_status),
            "billed_calls": self.billed_calls,
            "billed_usd": self.billed_usd,
            "wallet_usd": self.config.wallet_usd,
            "wallets_usd": dict(self.config.wallets_usd),
            "orgs_wallet_usd": {n: o.wallet_usd for n, o in self.config.orgs.items()},
            "inflight": self.inflight,
            "max_inflight": self.max_inflight,
            "held": self.gate.waiting,
            "downloads": self.downloads,
            "by_tag": dict(self.by_tag),
            "log": list(self.log),
            "bills": [b.public(clock.date(b.t)) for b in self.bill_log],
            "polls": self.polls,
            "poll_log": list(self.poll_log),
            "generations": dict(Counter(g.status for g in self.generations.values())),
            "clock_offset_s": self.clock_offset_s,
        }


def sign(file_id: str, exp: int) -> str:
    return hmac.new(_SIGNING_KEY, f"{file_id}:{exp}".encode(), hashlib.sha256).hexdigest()[:32]
