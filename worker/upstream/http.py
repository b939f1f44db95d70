"""HTTP plumbing shared by the upstream adapters: status -> typed error, rate-limit headers."""

from __future__ import annotations

import re

import httpx

from worker.upstream import errors as ue
from worker.upstream.base import CallResult, RateInfo

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)m(?!s))?\s*(?:(\d+(?:\.\d+)?)s)?\s*(?:(\d+)ms)?\s*$")


def parse_reset(value: str | None) -> float | None:
    """`x-ratelimit-reset-requests`: seconds ("12"), or durations like "1m30s", "12s", "250ms"."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    m = _DURATION.match(value)
    if not m or not any(m.groups()):
        return None
    mins, secs, ms = m.groups()
    return float(mins or 0) * 60 + float(secs or 0) + float(ms or 0) / 1000


def request_id(resp: httpx.Response) -> str | None:
    rid = resp.headers.get("x-request-id") or resp.headers.get("request-id")
    return str(rid) if rid else None


# Failures that happen before the request is on the wire: the upstream cannot have run it.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
# Headers with which upstreams mark an answer replayed for a repeated Idempotency-Key.
_REPLAY_HEADERS = ("idempotent-replayed", "idempotency-replayed", "x-idempotent-replayed")


def idempotency_headers(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key} if key else {}


async def send_built(
    client: httpx.AsyncClient, request: httpx.Request, idempotency_key: str | None
) -> httpx.Response:
    """Send a call built before it was journaled, with the journal's `Idempotency-Key`; a
    transport failure becomes the typed error (not sent, or outcome unknown)."""
    request.headers.update(idempotency_headers(idempotency_key))
    try:
        return await client.send(request)
    except httpx.HTTPError as exc:
        raise transport_error(exc) from None


def rate_info(resp: httpx.Response) -> RateInfo:
    def count(name: str) -> int | None:
        value = resp.headers.get(name)
        return int(value) if value is not None and value.strip().isdigit() else None

    return RateInfo(
        limit=count("x-ratelimit-limit-requests"),
        remaining=count("x-ratelimit-remaining-requests"),
        reset_s=parse_reset(resp.headers.get("x-ratelimit-reset-requests")),
    )


def fill_rate_headers(result: CallResult, resp: httpx.Response) -> CallResult:
    result.rate = rate_info(resp)
    result.replayed = any(
        resp.headers.get(h, "").strip().lower() == "true" for h in _REPLAY_HEADERS
    )
    return result


def raise_for_status(resp: httpx.Response) -> None:
    """Map an error response to the typed error the worker acts on."""
    status = resp.status_code
    if status < 400:
        return
    message, code = ue.error_message(resp.content, resp.reason_phrase or f"HTTP {status}")
    rid = request_id(resp)

    def err(cls: type[ue.UpstreamError]) -> ue.UpstreamError:
        error = cls(message, status=status, code=code, request_id=rid)
        error.rate = rate_info(resp)
        ue.note_refusal(error, resp.headers, resp.content)
        return error

    if status == 402:
        raise err(ue.OutOfCredits)
    if status == 401:
        raise err(ue.AuthFailed)
    if status == 403:
        raise err(ue.Forbidden)
    if status == 404:
        raise err(ue.ModelNotFound)
    if status == 422:
        raise err(ue.UnsafeContent)
    if status == 429:
        # Ideogram's inflight_limit comes without Retry-After: a short global cooldown is right.
        retry_after = ue.parse_retry_after(
            resp.headers.get("retry-after"),
            default=parse_reset(resp.headers.get("x-ratelimit-reset-requests")) or 1.0,
        )
        limited = ue.RateLimited(
            message, retry_after=retry_after, status=status, code=code, request_id=rid
        )
        limited.rate = rate_info(resp)
        ue.note_refusal(limited, resp.headers, resp.content)
        raise limited
    if status in (400, 413) or 405 <= status < 500:
        raise err(ue.InvalidRequest)
    raise err(ue.TransientError)


def transport_error(exc: httpx.HTTPError) -> ue.TransientError:
    """No answer. Before the request left it is a plain transient error; after, the outcome is
    unknown (the upstream may have run and billed it)."""
    if isinstance(exc, _NOT_SENT):
        return ue.TransientError(f"upstream unreachable: {type(exc).__name__}")
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "connection lost"
    return ue.OutcomeUnknown(f"upstream {kind} after the request was sent: {type(exc).__name__}")


def unreachable(what: str, url: str, exc: httpx.HTTPError, fix: str) -> str:
    """One line for a check that got no HTTP answer: what, where, why, and which setting."""
    if isinstance(exc, httpx.TimeoutException):
        why = "no answer in time"
    else:
        cause = exc.__cause__ or exc.__context__
        why = str(exc) or (str(cause) if cause else "") or type(exc).__name__
    return f"cannot reach {what} at {url}: {why}; check {fix}"
