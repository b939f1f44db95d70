"""What every upstream adapter takes and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import httpx

from worker.contract import UpscaleParams


@dataclass(frozen=True)
class ImageInput:
    """The reference image: a presigned GET URL (no bytes through the worker) or the bytes."""

    url: str | None = None
    data: bytes | None = None
    content_type: str = "image/png"
    filename: str = "image.png"


@dataclass(frozen=True)
class UpscaleRequest:
    image: ImageInput
    params: UpscaleParams
    model: str
    tag: str | None = None  # batch id, sent for cost tracking


@dataclass(frozen=True)
class UpstreamOutput:
    """One image an upstream answered with: where to fetch it (or its bytes), as it says."""

    url: str | None = None
    b64: str | None = None
    seed: int | None = None
    resolution: str | None = None
    safe: bool = True
    # the upstream async job it came from: re-read, it signs a fresh link (`worker.results`)
    upstream_job: str | None = None


@dataclass(frozen=True)
class RateInfo:
    """What an answer said about the key's rate limit (`x-ratelimit-*-requests`)."""

    limit: int | None = None
    remaining: int | None = None
    reset_s: float | None = None

    @property
    def known(self) -> bool:
        return self.limit is not None or self.remaining is not None


@dataclass
class CallResult:
    """A completed (billed) call, or an accepted async job still pending."""

    request_id: str | None
    outputs: list[UpstreamOutput] = field(default_factory=list)
    pending_id: str | None = None  # 202 async: poll this upstream job id
    rate: RateInfo = field(default_factory=RateInfo)
    replayed: bool = False  # the upstream says it replayed an earlier answer for this key
    cost_micros: int | None = None  # what the upstream says it billed (None: price x outputs)


@dataclass(frozen=True)
class KeyCheck:
    """What `upscale health` reports for the upstream: reachable, right URL, key accepted."""

    ok: bool
    detail: str


class Upstream(Protocol):
    needs_bytes: bool

    def build(self, req: UpscaleRequest) -> httpx.Request:
        """The call, encoded and ready to leave (before it is journaled)."""
        ...

    async def send(self, request: httpx.Request, idempotency_key: str | None) -> CallResult:
        """Send a built call with its `Idempotency-Key` (harmless where ignored)."""
        ...

    async def poll(self, pending_id: str) -> CallResult: ...

    async def check_key(self) -> KeyCheck:
        """Reachable, right URL and key accepted, by a request that is never billed."""
        ...

    async def aclose(self) -> None: ...
