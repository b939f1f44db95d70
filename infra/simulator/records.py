"""The records the simulator keeps between calls: a price held from a wallet, a gateway async
job (202) and an Ideogram async generation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from infra.simulator.accounts import Account

GenerationStatus = Literal["pending", "completed", "failed"]


@dataclass
class Hold:
    """A call's price, taken from its wallet and counted against its limits when it starts;
    billed when it completes (`billing.charge`), given back when it fails (`billing.release`)."""

    account: Account
    n: int
    usd: float
    counters: list[str]  # the spend counters (day / month, key / org) it was added to
    done: bool = False


@dataclass
class AsyncJob:
    """A gateway job answered 202; ready at `ready_at` (monotonic)."""

    id: str
    ready_at: float
    file_id: str | None = None
    error: str | None = None
    last_poll: float = 0.0
    settled: bool = False  # billed, or given back when it failed
    image_sha: str = ""
    idem: str = ""
    tag: str = ""
    endpoint: str = ""
    created: float = 0.0  # the simulator's clock
    cancelled: bool = False
    hold: Hold | None = None


@dataclass
class Generation:
    """An Ideogram generation submitted with `async` / `webhook_url`: its work runs after the
    answer (`generations.run`)."""

    id: str
    key: str
    org: str
    created: float  # the simulator's clock
    n: int
    knobs: dict[str, Any]
    tag: str = ""
    webhook_url: str = ""  # recorded, not delivered
    status: GenerationStatus = "pending"
    data: list[dict[str, Any]] = field(default_factory=list)
    failure_reason: str = ""
    cost_usd: float = 0.0


@dataclass
class Bill:
    """One billed call (or an extra bill injected by a test). The full key stays here; what
    `/_admin/stats` shows is `public()`, with the key's last 4 characters only."""

    t: float  # the simulator's clock
    key: str
    org_name: str | None
    n: int
    usd: float
    route: Literal["gateway", "ideogram"]
    endpoint: str
    tag: str = ""
    image_sha: str = ""
    idem: str = ""
    injected: bool = False

    def public(self, day: str) -> dict[str, Any]:
        return {
            "t": self.t,
            "image_sha": self.image_sha,
            "idem": self.idem,
            "n": self.n,
            "key": self.key[-4:],
            "usd": self.usd,
            "tag": self.tag,
            "org": self.org_name,
            "route": self.route,
            "endpoint": self.endpoint,
            "day": day,
            "injected": self.injected,
        }
