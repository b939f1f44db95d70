"""Simulator state: per-key rate windows (`ratelimit.py`), counters, the bill, async jobs, stored
results and the call log."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from infra.simulator.config import SimConfig

_SIGNING_KEY = secrets.token_bytes(32)


@dataclass
class AsyncJob:
    id: str
    ready_at: float
    file_id: str | None = None
    error: str | None = None
    last_poll: float = 0.0
    charged: bool = False
    image_sha: str = ""
    idem: str = ""
    key: str = ""


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
    downloads: int = 0
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=10_000))
    files: dict[str, bytes] = field(default_factory=dict)
    jobs: dict[str, AsyncJob] = field(default_factory=dict)
    # the bill: one entry per billed call (image fingerprint, idempotency key, time)
    bills: list[dict[str, Any]] = field(default_factory=list)
    # idempotency key -> finished answer (status, body, headers), and keys in progress
    answers: dict[str, tuple[int, bytes, dict[str, str]]] = field(default_factory=dict)
    answering: dict[str, Any] = field(default_factory=dict)

    def reset(self) -> None:
        self.windows.clear()
        self.calls = self.billed_calls = self.inflight = self.max_inflight = self.downloads = 0
        self.billed_usd = 0.0
        self.by_status.clear()
        self.by_tag.clear()
        self.inflight_by_key.clear()
        self.log.clear()
        self.jobs.clear()
        self.bills.clear()
        self.answers.clear()
        self.answering.clear()

    # -- the bill (wallet holds: `wallet.py`) --------------------------------------------------
    def bill(self, n: int, image_sha: str = "", idem: str = "", key: str = "") -> None:
        self.billed_calls += 1
        self.billed_usd = round(self.billed_usd + self.config.price_usd * n, 6)
        self.bills.append(
            {"t": time.time(), "image_sha": image_sha, "idem": idem, "n": n, "key": key[-4:]}
        )

    def settle_async(self) -> None:
        """An accepted async job is billed when it completes, polled or not."""
        now = time.monotonic()
        for job in self.jobs.values():
            if job.file_id and not job.error and not job.charged and now >= job.ready_at:
                job.charged = True
                self.bill(1, job.image_sha, job.idem, job.key)

    # -- results ----------------------------------------------------------------------------
    def store(self, data: bytes) -> str:
        file_id = secrets.token_hex(12)
        self.files[file_id] = data
        while len(self.files) > self.config.max_files:
            self.files.pop(next(iter(self.files)))
        return file_id

    def signed_path(self, file_id: str) -> str:
        exp = int(time.time()) + self.config.result_url_ttl_s
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
    ) -> None:
        """`t` is when the call arrived, `t_end` when it was answered (both unix seconds)."""
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
            }
        )

    def stats(self) -> dict[str, Any]:
        self.settle_async()
        return {
            "calls": self.calls,
            "by_status": dict(self.by_status),
            "billed_calls": self.billed_calls,
            "billed_usd": self.billed_usd,
            "wallet_usd": self.config.wallet_usd,
            "wallets_usd": dict(self.config.wallets_usd),
            "inflight": self.inflight,
            "max_inflight": self.max_inflight,
            "downloads": self.downloads,
            "by_tag": dict(self.by_tag),
            "log": list(self.log),
            "bills": list(self.bills),
        }


def sign(file_id: str, exp: int) -> str:
    return hmac.new(_SIGNING_KEY, f"{file_id}:{exp}".encode(), hashlib.sha256).hexdigest()[:32]
