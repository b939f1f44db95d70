"""Typed upstream errors: what the worker does depends only on the class, never on the route."""

from __future__ import annotations

import json
from typing import Any

from worker.logs import redact
from worker.upstream.base import RateInfo


class UpstreamError(Exception):
    """Base class. `message` is safe to show a human (redacted, bounded)."""

    status: int | None = None
    billed: bool = False

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
    pause_reason = "credits"


class OutOfCredits(PauseError):
    """402: wallet empty or key budget hit. Not billed."""

    pause_reason = "credits"


class AuthFailed(PauseError):
    """401: bad or missing key."""

    pause_reason = "auth"


class Forbidden(PauseError):
    """403: key not allowed for this model/scope."""

    pause_reason = "forbidden"


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
        from datetime import UTC, datetime
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
            return max(0.0, (when - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            return default
