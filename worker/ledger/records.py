"""What the ledger stores and returns: typed views of its Redis hashes and JSON values."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from worker.contract import JobSpec, JobState, micros_to_usd

EnqueueOutcome = Literal["created", "duplicate", "requeued"]
StartOutcome = Literal["ok", "final", "busy", "missing"]
CallState = Literal["sent", "answered", "pending", "refused", "unknown"]
CallbackState = Literal["delivered", "retrying", "failed", "refused"]


class EnqueueResult(BaseModel):
    job_id: str
    outcome: EnqueueOutcome
    state: str


class PaidOutput(BaseModel):
    url: str | None = None
    b64: str | None = None
    seed: int | None = None
    resolution: str | None = None
    safe: bool = True


class PaidResult(BaseModel):
    """What a billed call returned (or the async job it started), saved before anything else,
    so a crash, a truncated download or an S3 outage resumes from it instead of paying again."""

    request_id: str | None = None
    pending_id: str | None = None
    outputs: list[PaidOutput] = []
    cost_micros: int = 0
    at: float = 0.0


class CallJournal(BaseModel):
    """The job's latest upstream call (see `worker/lua/call_begin.lua`)."""

    n: int = 0
    idem: str = ""
    token: str = ""
    state: CallState | None = None
    est: int = 0
    possible: int = 0


class StartResult(BaseModel):
    outcome: StartOutcome
    attempts: int = 0
    state: str = ""
    busy_ms: int = 0
    paid: PaidResult | None = None
    journal: CallJournal | None = None


class JobRecord(BaseModel):
    """A ledger record as users see it (`upscale status`, the Python API, callbacks)."""

    job_id: str
    state: str
    source: str = ""
    source_etag: str | None = None
    source_version: str | None = None
    dest: str = ""
    batch: str | None = None
    lane: str = "live"
    model: str = ""
    attempts: int = 0
    calls: int = 0
    billed_calls: int = 0
    unknown_calls: int = 0
    cost_usd: float = 0.0
    possible_usd: float = 0.0
    request_ids: list[str] = []
    wait_reason: str | None = None
    wait_detail: str | None = None
    error_class: str | None = None
    error: str | None = None
    output_bytes: int | None = None
    output_resolution: str | None = None
    output_etag: str | None = None
    output_content_type: str | None = None
    timings_ms: dict[str, int] = {}
    created_at: int | None = None
    updated_at: int | None = None
    reclaims: int = 0
    callback_state: CallbackState | None = None
    callback_attempts: int = 0
    callback_detail: str | None = None
    payload: dict[str, Any] | None = Field(default=None, exclude=True)

    @classmethod
    def from_hash(cls, job_id: str, h: dict[str, str]) -> JobRecord:
        def opt_int(name: str) -> int | None:
            return int(h[name]) if h.get(name) else None

        def opt(name: str) -> str | None:
            return h.get(name) or None

        timings = {
            k[2:-3]: int(v) for k, v in h.items() if k.startswith("t_") and k.endswith("_ms")
        }
        return cls(
            job_id=job_id,
            state=h.get("state", ""),
            source=h.get("source", ""),
            source_etag=opt("source_etag"),
            source_version=opt("source_version"),
            dest=h.get("dest", ""),
            batch=opt("batch"),
            lane=h.get("lane", "live"),
            model=h.get("model", ""),
            attempts=int(h.get("attempts", 0)),
            calls=int(h.get("calls", 0)),
            billed_calls=int(h.get("billed_calls", 0)),
            unknown_calls=int(h.get("unknown_calls", 0)),
            cost_usd=micros_to_usd(int(h.get("cost_micros", 0))),
            possible_usd=micros_to_usd(int(h.get("possible_micros", 0))),
            request_ids=json.loads(h.get("request_ids", "[]")),
            wait_reason=opt("wait_reason"),
            wait_detail=opt("wait_detail"),
            error_class=opt("error_class"),
            error=opt("error"),
            output_bytes=opt_int("output_bytes"),
            output_resolution=opt("output_resolution"),
            output_etag=opt("output_etag"),
            output_content_type=opt("output_content_type"),
            timings_ms=timings,
            created_at=opt_int("created_at"),
            updated_at=opt_int("updated_at"),
            reclaims=int(h.get("reclaims", 0)),
            callback_state=opt("callback_state"),
            callback_attempts=int(h.get("callback_attempts", 0)),
            callback_detail=opt("callback_detail"),
            payload=json.loads(h["spec"]) if h.get("spec") else None,
        )

    @property
    def final(self) -> bool:
        return JobState(self.state).final if self.state else False

    @property
    def spend_usd(self) -> float:
        """Billed plus possibly billed: never below what the upstream charged."""
        return round(self.cost_usd + self.possible_usd, 6)


def ledger_fields(spec: JobSpec) -> dict[str, str]:
    return {
        "source": spec.source.uri,
        "source_etag": spec.source.etag or "",
        "source_version": spec.source.version_id or "",
        "dest": spec.dest.uri,
        "batch": spec.batch or "",
        "lane": spec.lane,
        "model": spec.model,
        # The whole request, so a job can be re-enqueued from its record (retry, heal, reclaim).
        "spec": json.dumps(spec.to_payload(), separators=(",", ":")),
    }
