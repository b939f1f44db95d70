"""The job contract: payload schema, job-id derivation and Redis key names.

Everything that crosses the producer/worker boundary is defined here (key names re-exported
from `worker.keys`) so both sides always agree; producers reach it through `worker.api`.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from enum import StrEnum
from functools import cache
from json.encoder import encode_basestring
from typing import Annotated, Any, Literal, get_args
from urllib.parse import quote, unquote

from pydantic import BaseModel, ConfigDict, Field, field_validator

from worker.formats import FIXED, key_for, template_ext
from worker.keys import BULK_QUEUE_NAME, QUEUE_NAME, QUEUES, Keys, queue_for

# ---------------------------------------------------------------------------------------------
# S3 URIs
# ---------------------------------------------------------------------------------------------

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_MAX_KEY = 1024


class S3Object(BaseModel):
    """An S3 object. The key is an opaque string: never stripped, normalised or re-encoded."""

    model_config = ConfigDict(frozen=True)

    bucket: str
    key: str = Field(min_length=1, max_length=_MAX_KEY)
    version_id: str | None = None
    etag: str | None = None

    @field_validator("bucket")
    @classmethod
    def _valid_bucket(cls, v: str) -> str:
        if not _BUCKET_RE.match(v):
            raise ValueError(f"invalid S3 bucket name {v!r}")
        return v

    @field_validator("etag")
    @classmethod
    def _bare_etag(cls, v: str | None) -> str | None:
        # S3 returns ETags quoted in some APIs and bare in events: keep one form for identity.
        return v.strip('"') if v else v

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @classmethod
    def parse(cls, uri: str, *, version_id: str | None = None, etag: str | None = None) -> S3Object:
        """Parse `s3://bucket/key`. The key is taken verbatim (no URL decoding)."""
        if not uri.startswith("s3://"):
            raise ValueError(f"not an S3 URI (expected s3://bucket/key): {uri!r}")
        bucket, sep, key = uri[5:].partition("/")
        if not sep or not key:
            raise ValueError(f"S3 URI has no object key: {uri!r}")
        return cls(bucket=bucket, key=key, version_id=version_id, etag=etag)


# The default destination: a sibling bucket, same key, "@2x" before the extension.
DEFAULT_DEST_TEMPLATE = "s3://{bucket}-upscaled/{key_stem}@2x.{ext}"


def render_destination(
    template: str, source: S3Object, output_format: str | None = None
) -> S3Object:
    """Fill a destination template from the source object.

    Variables: {bucket} {key} {key_stem} (key without extension) {ext} (extension, no dot,
    `png` when the key has none) {basename} {dirname} (no trailing slash; empty at the root).
    A template that names a bucket and ends in `/` is a prefix: the source key is appended.

    `output_format` (`UPSCALE_OUTPUT_FORMAT`): a fixed format (`png`, `jpeg`, `webp`, `avif`)
    renders {ext} as its extension, and a key whose extension names another format (a prefix
    template keeps the source key) gets that format's. Otherwise the format is known only at
    store time, where a key that names another format is corrected (`worker.output`).
    """
    bucket, key = destination_of(template, source.bucket, source.key, output_format)
    return S3Object(bucket=bucket, key=key)


def destination_of(
    template: str, bucket: str, key: str, output_format: str | None = None
) -> tuple[str, str]:
    """`render_destination` on plain strings, validated as `S3Object` validates (a backfill
    renders millions: no model per object). Raises ValueError."""
    stem, dot_ext = posixpath.splitext(key)
    if not dot_ext or "/" in dot_ext:
        stem, dot_ext = key, ".png"
    fixed_ext = template_ext(output_format)
    dirname = posixpath.dirname(key)
    if template.endswith("/"):
        template += "{key}"
    if not dirname:  # a root-level key: `{dirname}/2x/...` must not render `//`
        template = template.replace("{dirname}/", "")
    try:
        rendered = template.format(
            bucket=bucket,
            key=key,
            key_stem=stem,
            ext=fixed_ext or dot_ext[1:],
            basename=posixpath.basename(key),
            dirname=dirname,
        )
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"bad destination template {template!r}: unknown variable {e}") from e
    if not rendered.startswith("s3://"):
        raise ValueError(f"not an S3 URI (expected s3://bucket/key): {rendered!r}")
    dest_bucket, sep, dest_key = rendered[5:].partition("/")
    if not sep or not dest_key:
        raise ValueError(f"S3 URI has no object key: {rendered!r}")
    fixed = FIXED.get(output_format or "")
    if fixed:
        dest_key = key_for(dest_key, fixed)
    check_object(dest_bucket, dest_key)
    if dest_bucket == bucket and dest_key == key:
        raise ValueError(f"destination 's3://{dest_bucket}/{dest_key}' would overwrite the source")
    return dest_bucket, dest_key


@cache
def _bucket_ok(bucket: str) -> bool:
    return _BUCKET_RE.match(bucket) is not None


def check_object(bucket: str, key: str) -> None:
    """What `S3Object` checks of a bucket and key, without building one (ValueError)."""
    if not _bucket_ok(bucket):
        raise ValueError(f"invalid S3 bucket name {bucket!r}")
    if not 1 <= len(key) <= _MAX_KEY:
        raise ValueError(f"S3 key of {len(key)} characters: 1 to {_MAX_KEY} allowed")


# ---------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------

MagicPrompt = Literal["AUTO", "ON", "OFF"]
Lane = Literal["live", "bulk"]
LANES: tuple[Lane, ...] = get_args(Lane)


class JobState(StrEnum):
    """A job's state in its ledger record: the one vocabulary for it (`worker/moves.py` says
    which script moves a job from which state to which; `docs/lifecycle.md` draws it)."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # paused / cooling down / over budget: never a failure
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"  # `upscale cancel`: no call after it; a call already paid is stored

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


# The states a job ends in (a record that is final is compacted and retired).
FinalState = Literal[JobState.SUCCEEDED, JobState.FAILED, JobState.SKIPPED, JobState.CANCELLED]
FINAL_STATES: frozenset[JobState] = frozenset(get_args(FinalState))
# The final states `upscale retry` runs again (enqueue's requeue_failed).
RetryState = Literal[JobState.FAILED, JobState.CANCELLED]
RETRY_STATES: tuple[RetryState, ...] = get_args(RetryState)


class CallState(StrEnum):
    """The state of a job's call journal (`Keys.call`): its latest upstream call."""

    SENT = "sent"  # journaled before the request left: its outcome is not known yet
    ANSWERED = "answered"  # a billed result, saved (`Keys.paid`)
    PENDING = "pending"  # the upstream accepted an async job (202): billed when it completes
    REFUSED = "refused"  # an error answer, or the async job failed: not billed
    UNKNOWN = "unknown"  # no answer (timeout, lost connection, a run that died): possibly billed


class UpscaleParams(BaseModel):
    """The knobs sent to the model. Every field is part of the job identity."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str | None = Field(default=None, max_length=10_000)
    resemblance: Annotated[int, Field(ge=1, le=100)] | None = None
    detail: Annotated[int, Field(ge=1, le=100)] | None = None
    magic_prompt: MagicPrompt | None = None
    seed: Annotated[int, Field(ge=0, le=2_147_483_647)] | None = None


class JobSpec(BaseModel):
    """What a producer asks for. Serialised as JSON into the arq job (never pickle)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: S3Object
    dest: S3Object
    params: UpscaleParams = UpscaleParams()
    model: str = "ideogram/ideogram-upscale"
    # Not part of the identity: the same work requested from two batches is still one job.
    batch: str | None = Field(default=None, max_length=200, pattern=r"^[A-Za-z0-9._:@\-]+$")
    lane: Lane = "live"
    tags: dict[str, str] = Field(default_factory=dict)
    callback_url: str | None = None
    # Not part of the identity: the producer listed the destination prefix just before enqueue
    # and found no output there (a backfill), so the worker skips its destination HEAD.
    dest_listed: bool = False

    @property
    def job_id(self) -> str:
        return job_id_for(self)

    def to_payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=False)


def job_id_for(spec: JobSpec) -> str:
    """Deterministic id: source identity (incl. version/etag) + destination + parameters + model.

    Duplicate events and re-run backfills map to the same id, so they never pay twice.
    """
    src, dst = spec.source, spec.dest
    return JobIdentity(spec.params, spec.model).job_id(
        src.bucket, src.key, src.version_id, src.etag, dst.bucket, dst.key
    )


class JobIdentity:
    """Job ids of jobs that share parameters and model (a backfill's): the sha256 of
    `{"dst":[b,k],"model":m,"params":{..},"src":[b,k,version,etag]}` (sorted keys, compact,
    UTF-8), with the shared middle encoded once."""

    def __init__(self, params: UpscaleParams, model: str) -> None:
        self._middle = (
            ',"model":'
            + _id_json(model)
            + ',"params":'
            + _id_json(params.model_dump(mode="json"))
            + ',"src":'
        )

    def job_id(
        self,
        src_bucket: str,
        src_key: str,
        version_id: str | None,
        etag: str | None,
        dest_bucket: str,
        dest_key: str,
    ) -> str:
        identity = (
            f'{{"dst":[{_str(dest_bucket)},{_str(dest_key)}]{self._middle}'
            f"[{_str(src_bucket)},{_str(src_key)},{_str(version_id)},{_str(etag)}]}}"
        )
        return f"uq-{hashlib.sha256(identity.encode()).hexdigest()[:32]}"


def _id_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _str(value: str | None) -> str:
    """A string as `_id_json` writes it (the C encoder, without json.dumps' per-call setup)."""
    return "null" if value is None else encode_basestring(value)


def prompt_hash(prompt: str | None) -> str:
    return hashlib.sha256((prompt or "").encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Names shared with arq and Redis (every key name lives in worker/keys.py)
# ---------------------------------------------------------------------------------------------

ARQ_FUNCTION = "upscale"

# Converted inputs are staged here (in the destination bucket) when the upstream fetches a URL.
STAGING_PREFIX = ".upscale-staging/"
# S3 metadata on every output (and staged input): the recursion guard and idempotent outputs.
META_JOB_ID = "upscale-job-id"


MICRO = 1_000_000


def usd_to_micros(usd: float) -> int:
    return round(usd * MICRO)


def micros_to_usd(micros: int) -> float:
    return micros / MICRO


def s3_key_quote(key: str) -> str:
    """Quote a key for use in an HTTP header or URL path (S3 metadata must be ASCII)."""
    return quote(key, safe="/")


def s3_key_unquote(key: str) -> str:
    return unquote(key)


__all__ = [
    "ARQ_FUNCTION",
    "BULK_QUEUE_NAME",
    "FINAL_STATES",
    "META_JOB_ID",
    "QUEUES",
    "QUEUE_NAME",
    "RETRY_STATES",
    "STAGING_PREFIX",
    "CallState",
    "FinalState",
    "JobIdentity",
    "JobSpec",
    "JobState",
    "Keys",
    "RetryState",
    "S3Object",
    "UpscaleParams",
    "check_object",
    "destination_of",
    "job_id_for",
    "queue_for",
]
