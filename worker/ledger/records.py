"""What the ledger stores and returns: typed views of its Redis hashes and JSON values."""

from __future__ import annotations

import json
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field

from worker.contract import CallState, JobSpec, JobState, S3Object, micros_to_usd

EnqueueOutcome = Literal["created", "duplicate", "requeued", "refused"]
CancelOutcome = Literal["cancelled", "after_call", "final", "missing"]
StartOutcome = Literal["ok", "final", "busy", "missing"]
FinishOutcome = Literal["ok", "final", "missing"]  # 'fenced' raises `Fenced`
CallbackState = Literal["delivered", "retrying", "failed", "refused"]


class NewJob(NamedTuple):
    """A job as `enqueue.lua` takes it (JSON writes it as a row): its id, lane, batch ("" for
    none) and record fields (`ledger_fields`)."""

    job_id: str
    lane: str
    batch: str
    fields: dict[str, str]


class EnqueueResult(BaseModel):
    job_id: str
    outcome: EnqueueOutcome
    state: JobState  # after the call (`refused`: its batch was cancelled; no record was made)


class PaidOutput(BaseModel):
    url: str | None = None
    b64: str | None = None
    seed: int | None = None
    resolution: str | None = None
    safe: bool = True
    upstream_job: str | None = None  # its async job upstream: re-read for a fresh link


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
    sent_at: int = 0  # Redis time (ms) the call was journaled, just before it left


class StartResult(BaseModel):
    outcome: StartOutcome
    attempts: int = 0
    state: JobState | None = None  # `final`: which
    busy_ms: int = 0
    paid: PaidResult | None = None
    journal: CallJournal | None = None


class JobRecord(BaseModel):
    """A ledger record as users see it (`upscale status`, the Python API, callbacks)."""

    job_id: str
    state: JobState | None  # None: a record with no state (not one the ledger wrote)
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
    note: str | None = None
    cancel_requested: bool = False
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

        # a succeeded record without counters made the one billed call that is the rule
        one = "1" if h.get("state") == JobState.SUCCEEDED and "calls" not in h else "0"
        timings = {
            k[2:-3]: int(v) for k, v in h.items() if k.startswith("t_") and k.endswith("_ms")
        }
        return cls(
            job_id=job_id,
            state=JobState(h["state"]) if h.get("state") else None,
            source=h.get("source", ""),
            source_etag=opt("source_etag"),
            source_version=opt("source_version"),
            dest=h.get("dest", ""),
            batch=opt("batch"),
            lane=h.get("lane", "live"),
            model=h.get("model") or _DEFAULT_MODEL,
            attempts=int(h.get("attempts", 0)),
            calls=int(h.get("calls", one)),
            billed_calls=int(h.get("billed_calls", one)),
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
            note=opt("note"),
            cancel_requested=h.get("cancel") == "1",
            callback_state=opt("callback_state"),
            callback_attempts=int(h.get("callback_attempts", 0)),
            callback_detail=opt("callback_detail"),
            payload=spec_payload(h),
        )

    @property
    def final(self) -> bool:
        return self.state is not None and self.state.final

    @property
    def spend_usd(self) -> float:
        """Billed plus possibly billed: never below what the upstream charged."""
        return round(self.cost_usd + self.possible_usd, 6)


def ledger_fields(spec: JobSpec) -> dict[str, str]:
    """The record's fields: the whole request, stored once (arq's payload names no spec), so a
    run reads it from here and a job can be re-enqueued from its record (retry, heal,
    reclaim). Empty parts are left out: a small record stays a compact hash in Redis."""
    fields = {
        "source": spec.source.uri,
        "source_etag": spec.source.etag or "",
        "source_version": spec.source.version_id or "",
        "dest": spec.dest.uri,
        "batch": spec.batch or "",
        "lane": "" if spec.lane == "live" else spec.lane,  # left out: its default
        "model": "" if spec.model == _DEFAULT_MODEL else spec.model,
    }
    params = spec.params.model_dump(mode="json", exclude_none=True)
    if params:
        fields["params"] = _compact(params)
    if spec.tags:
        fields["tags"] = _compact(spec.tags)
    if spec.callback_url:
        fields["callback_url"] = spec.callback_url
    if spec.dest_listed:
        fields["dest_listed"] = "1"
    return {k: v for k, v in fields.items() if v}


_DEFAULT_MODEL: str = JobSpec.model_fields["model"].default


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def spec_payload(h: dict[str, str]) -> dict[str, Any] | None:
    """The request a record holds, as `JobSpec` reads it; None when the record holds none (a
    record written before it was stored as fields keeps it whole in `spec`). A succeeded or
    skipped record keeps no parameters: only a failed or cancelled one may run again."""
    if h.get("spec"):
        return dict(json.loads(h["spec"]))
    if not h.get("source") or not h.get("dest"):
        return None
    source = S3Object.parse(h["source"])
    dest = S3Object.parse(h["dest"])
    payload: dict[str, Any] = {
        "source": {
            "bucket": source.bucket,
            "key": source.key,
            "version_id": h.get("source_version") or None,
            "etag": h.get("source_etag") or None,
        },
        "dest": {"bucket": dest.bucket, "key": dest.key},
        "params": json.loads(h.get("params") or "{}"),
        "batch": h.get("batch") or None,
        "lane": h.get("lane") or "live",
        "tags": json.loads(h.get("tags") or "{}"),
        "callback_url": h.get("callback_url") or None,
        "dest_listed": h.get("dest_listed") == "1",
    }
    if h.get("model"):
        payload["model"] = h["model"]
    return payload


def spec_of(h: dict[str, str]) -> JobSpec | None:
    payload = spec_payload(h)
    return JobSpec.model_validate(payload) if payload is not None else None
