"""Typed upstream errors: what the worker does depends only on the class, never on the route."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from worker.logs import redact
from worker.upstream.base import RateInfo

# Why an upstream is paused, as data (`worker.flow.decisions.PAUSE_RULES` says what each does):
# `credits` an empty wallet (402 insufficient_funds / insufficient_credits), `daily_limit` a
# daily spend limit (402 daily_limit, or the gateway's 402 budget_exceeded with a reset time),
# `cap_reached` a key's own spend cap (gateway 403 scope_exceeded, 402 budget_exceeded of a
# sub-account), `auth` 401, `forbidden` any other 403, `manual` an operator's.
PauseReason = Literal["credits", "daily_limit", "cap_reached", "auth", "forbidden", "manual"]


class UpstreamError(Exception):
    """Base class. `message` is safe to show a human (redacted, bounded). `retry_after_s`:
    when the upstream said to come back (Retry-After, else a daily limit's reset time);
    `max_inflight`: the in-flight cap a 429 named (`max_inflight_requests`)."""

    status: int | None = None
    billed: bool = False
    retry_after_s: float | None = None
    max_inflight: int | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.message = redact(message)[:500]
        self.status = status if status is not None else self.status
        self.code = code
        self.request_id = request_id
        self.rate: RateInfo = RateInfo()  # the answer's x-ratelimit-* headers, if any
        super().__init__(self.message)

    def describe(self) -> str:
        parts = [f"HTTP {self.status}" if self.status else None, self.code, self.message]
        return ": ".join(p for p in parts if p)


# --- the job cannot succeed: it ends `failed` with the reason -----------------------------
class PermanentError(UpstreamError):
    pass


class InvalidRequest(PermanentError):
    """400 / 413: the input or a knob was rejected."""


class ModelNotFound(PermanentError):
    """404: unknown model or endpoint — a configuration error."""


class UnsafeContent(PermanentError):
    """422 safety check, or a completed call whose image was withheld (billed)."""


# --- nothing works until a human acts: global pause, jobs wait -------------------------
class PauseError(UpstreamError):
    @property
    def pause_reason(self) -> PauseReason:
        return "credits"


class OutOfCredits(PauseError):
    """402: the wallet is empty, a daily limit or a key's spend cap is reached. Not billed."""

    @property
    def pause_reason(self) -> PauseReason:
        if self.code == "daily_limit":
            return "daily_limit"
        if self.code == "budget_exceeded":  # the gateway: a daily limit says when it resets
            return "daily_limit" if self.retry_after_s is not None else "cap_reached"
        return "credits"


class AuthFailed(PauseError):
    """401: bad or missing key."""

    @property
    def pause_reason(self) -> PauseReason:
        return "auth"


class Forbidden(PauseError):
    """403: not allowed for this model, or (`scope_exceeded`) a scoped key past its cap."""

    @property
    def pause_reason(self) -> PauseReason:
        return "cap_reached" if self.code == "scope_exceeded" else "forbidden"


# --- try again later -------------------------------------------------------------------
class RateLimited(UpstreamError):
    """429: global cooldown for `retry_after` seconds; not a failed try."""

    def __init__(self, message: str, *, retry_after: float, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class TransientError(UpstreamError):
    """5xx, timeouts, connection failures: backoff and retry, counted as an attempt."""


class OutcomeUnknown(TransientError):
    """The request left but no answer came back (read timeout, connection lost mid-answer):
    the upstream may have run and billed it. Counted as possibly billed."""


class UpstreamJobFailed(TransientError):
    """An async (202) upstream job ended `failed` or is unknown: not billed, submit again."""


class UpstreamJobLost(UpstreamJobFailed):
    """The upstream no longer knows an async job it accepted (expired?): it may have billed it."""


class ResultUnavailable(UpstreamError):
    """A paid result could not be fetched (expired / refused): only a new call can replace it."""


def error_message(body: bytes, fallback: str) -> tuple[str, str | None]:
    """Parse an error body defensively: `{"error": {...}}`, `{"error": "..."}`, other JSON, text."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace").strip()
        return (text[:300] or fallback), None
    if not isinstance(data, dict):
        return str(data)[:300] or fallback, None
    err = data.get("error")
    code: str | None = None
    if isinstance(err, dict):
        message = str(err.get("message") or err.get("type") or fallback)
        code = err.get("code") or err.get("type")
    elif isinstance(err, str):
        message = err
    else:
        message = str(data.get("message") or data.get("detail") or fallback)
    reason = data.get("reject_reason")
    if reason:
        code = str(reason)
        message = f"{message} ({reason})" if reason not in message else message
    return message, (str(code) if code else None)


def parse_retry_after(value: str | None, default: float = 1.0) -> float:
    """Retry-After in seconds (an HTTP date is also allowed by the RFC)."""
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
            return max(0.0, (when - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            return default


# A 402 daily_limit's reset time (RFC 3339, UTC), besides Retry-After (the simulator's reading;
# not published: see /work/shared/UPSTREAM.md).
DAILY_RESET_HEADER = "x-daily-limit-reset"


def note_refusal(error: UpstreamError, headers: Mapping[str, str], body: bytes) -> None:
    """What a refusal says beyond its status: when to come back (Retry-After, counted from
    now so no clock is compared; else the daily limit's reset time) and the in-flight cap a
    429 names (`max_inflight_requests`)."""
    if (after := headers.get("retry-after")) is not None:
        error.retry_after_s = parse_retry_after(after)
    elif (reset := headers.get(DAILY_RESET_HEADER)) is not None:
        try:
            when = datetime.fromisoformat(reset.replace("Z", "+00:00"))
            error.retry_after_s = max(0.0, (when - datetime.now(UTC)).total_seconds())
        except ValueError:
            pass
    try:
        data = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        data = None
    cap = data.get("max_inflight_requests") if isinstance(data, dict) else None
    if isinstance(cap, int | float) and not isinstance(cap, bool) and cap >= 1:
        error.max_inflight = math.floor(cap)
