"""Error bodies and headers in every shape the upstream contract allows."""

from __future__ import annotations

import httpx
import pytest

from worker.logs import redact, register_secret
from worker.upstream import errors as e
from worker.upstream.http import parse_reset, raise_for_status


def _resp(status: int, body: bytes, **headers: str) -> httpx.Response:
    return httpx.Response(
        status, content=body, headers=headers, request=httpx.Request("POST", "http://u/x")
    )


@pytest.mark.parametrize(
    ("status", "body", "cls", "text"),
    [
        (
            400,
            b'{"error": {"type": "invalid_request", "message": "bad seed", "code": "x"}}',
            e.InvalidRequest,
            "bad seed",
        ),
        (402, b'{"error": "insufficient credits"}', e.OutOfCredits, "insufficient credits"),
        (
            402,
            b'{"error": "no money", "reject_reason": "daily_limit"}',
            e.OutOfCredits,
            "daily_limit",
        ),
        (401, b"<html>nope</html>", e.AuthFailed, "nope"),
        (403, b"", e.Forbidden, "Forbidden"),
        (404, b'{"message": "unknown model"}', e.ModelNotFound, "unknown model"),
        (413, b'{"error": "too big"}', e.InvalidRequest, "too big"),
        (422, b'{"error": "safety check failed"}', e.UnsafeContent, "safety"),
        (500, b'{"error": {"type": "server_error"}}', e.TransientError, "server_error"),
        (503, b"[1, 2]", e.TransientError, "[1, 2]"),
    ],
)
def test_error_mapping(status: int, body: bytes, cls: type[e.UpstreamError], text: str) -> None:
    with pytest.raises(cls) as info:
        raise_for_status(_resp(status, body, **{"x-request-id": "req_1"}))
    assert text in info.value.describe()
    assert info.value.request_id == "req_1" and info.value.status == status


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({}, 1.0),
        ({"x-ratelimit-reset-requests": "1m30s"}, 90.0),
        ({"retry-after": "junk"}, 1.0),
    ],
)
def test_retry_after(headers: dict[str, str], expected: float) -> None:
    with pytest.raises(e.RateLimited) as info:
        raise_for_status(_resp(429, b'{"reject_reason": "inflight_limit"}', **headers))
    assert info.value.retry_after == pytest.approx(expected)


def test_parse_reset() -> None:
    assert parse_reset("12s") == 12 and parse_reset("250ms") == 0.25 and parse_reset("3") == 3
    assert parse_reset(None) is None and parse_reset("soon") is None


def test_redaction_of_keys_signatures_and_data_urls() -> None:
    register_secret("sk-live-SECRET123")
    text = (
        "Authorization: Bearer sk-live-SECRET123 url=https://s3/x?X-Amz-Credential=AKIA&X-Amz-Signature=deadbeef"
        "&exp=1&sig=abc123 data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB api_key=sk-live-SECRET123"
    )
    out = redact(text)
    for secret in ("SECRET123", "deadbeef", "AKIA", "abc123", "iVBORw0KGgo"):
        assert secret not in out
    # the error message an exception carries is redacted too
    assert "SECRET123" not in e.TransientError("failed with key sk-live-SECRET123").message
