"""The outcome table: every exception class -> fail / wait / attempt (pure, no I/O)."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from worker.contract import S3Object
from worker.images import ImageRejected
from worker.job.source import newer_version
from worker.outcomes import (
    JobFailed,
    JobSkipped,
    JobWaits,
    OwnOutput,
    SourceDeleted,
    Superseded,
    outcome_for,
)
from worker.results import DownloadFailed, ResultRejected
from worker.storage import (
    AccessDenied,
    Head,
    SourceMissing,
    StorageRejected,
    StorageUnavailable,
)
from worker.upstream import errors as ue

CASES: list[tuple[BaseException, str, str, str]] = [
    # exception, action, error class or wait reason, flow effect
    (JobFailed("SourceMissing", "gone"), "fail", "SourceMissing", "none"),
    # final without retry, and `skipped` (not `failed`): nothing for a person to act on
    (JobSkipped("ours"), "fail", "Skipped", "none"),
    (OwnOutput("provenance metadata"), "fail", "OwnOutput", "none"),
    (Superseded("superseded: newer version"), "fail", "Superseded", "none"),
    (SourceDeleted("source deleted"), "fail", "SourceDeleted", "none"),
    (JobWaits("storage", 5, "S3 down"), "wait", "storage", "none"),
    (ue.OutOfCredits("no credits", status=402), "wait", "paused:credits", "pause"),
    (ue.AuthFailed("bad key", status=401), "wait", "paused:auth", "pause"),
    (ue.Forbidden("scope", status=403), "wait", "paused:forbidden", "pause"),
    (ue.RateLimited("slow down", retry_after=7, status=429), "wait", "rate_limited", "cooldown"),
    (ue.InvalidRequest("bad", status=400), "fail", "InvalidRequest", "none"),
    (ue.ModelNotFound("no model", status=404), "fail", "ModelNotFound", "none"),
    (ue.UnsafeContent("unsafe", status=422), "fail", "UnsafeContent", "none"),
    (ue.TransientError("503", status=503), "attempt", "TransientError", "server_error"),
    (ue.OutcomeUnknown("read timeout"), "attempt", "OutcomeUnknown", "server_error"),
    (ue.UpstreamJobFailed("async failed"), "attempt", "UpstreamJobFailed", "none"),
    (ue.UpstreamJobLost("async gone"), "attempt", "UpstreamJobLost", "none"),
    (ue.ResultUnavailable("expired"), "attempt", "ResultUnavailable", "none"),
    (StorageUnavailable("S3 down"), "wait", "storage", "none"),
    (DownloadFailed("truncated"), "wait", "download", "none"),
    (AccessDenied("403"), "fail", "AccessDenied", "none"),
    (SourceMissing("404"), "fail", "SourceMissing", "none"),
    (StorageRejected("MetadataTooLarge"), "fail", "StorageRejected", "none"),
    (ResultRejected("host"), "fail", "ResultRejected", "none"),
    (ImageRejected("not an image"), "fail", "InvalidImage", "none"),
    (TimeoutError(), "attempt", "Timeout", "none"),
    (RedisConnectionError("gone"), "wait", "redis", "none"),
    (RuntimeError("boom"), "attempt", "RuntimeError", "none"),
    (KeyError("x"), "attempt", "KeyError", "none"),
]


@pytest.mark.parametrize(
    ("exc", "action", "label", "effect"), CASES, ids=lambda v: type(v).__name__
)
def test_every_exception_has_one_row(exc: Exception, action: str, label: str, effect: str) -> None:
    o = outcome_for(exc, pause_poll_s=2.0, outage_wait_s=5.0)
    assert o.action == action
    assert (o.wait_reason if action == "wait" else o.error_class) == label
    assert o.effect == effect


def test_waits_carry_their_delay() -> None:
    o = outcome_for(ue.RateLimited("x", retry_after=7.5), pause_poll_s=2, outage_wait_s=5)
    assert o.wait_s == 7.5
    assert outcome_for(ue.OutOfCredits("x"), pause_poll_s=2, outage_wait_s=5).wait_s == 2


def test_secrets_never_reach_the_message() -> None:
    url = "https://s3/x.png?X-Amz-Signature=abcdef0123&X-Amz-Credential=AKIA"
    o = outcome_for(RuntimeError(f"failed on {url}"), pause_poll_s=2, outage_wait_s=5)
    assert "abcdef0123" not in o.message and "AKIA" not in o.message


def test_superseded_and_deleted_sources_are_skips_not_failures() -> None:
    for exc in (Superseded("superseded: v2"), SourceDeleted("gone"), OwnOutput("ours")):
        assert isinstance(exc, JobSkipped)  # `run` ends these `skipped`, with the message
        assert outcome_for(exc, pause_poll_s=2, outage_wait_s=5).message == str(exc)


def _head(etag: str, version_id: str | None = None) -> Head:
    return Head(size=1, etag=etag, content_type=None, metadata={}, version_id=version_id)


def test_newer_version_compares_version_ids_then_etags() -> None:
    v1 = S3Object(bucket="bkt", key="a.png", version_id="v1", etag="e1")
    assert newer_version(v1, _head("e1", "v1")) is None
    assert "newer version (v2" in (newer_version(v1, _head("e2", "v2")) or "")
    assert newer_version(v1, _head("e1", "v2"))  # the same bytes uploaded again: a new version
    plain = S3Object(bucket="bkt", key="a.png", etag="e1")
    assert newer_version(plain, _head("e1", "v9")) is None
    assert "replaced (ETag now e2" in (newer_version(plain, _head("e2")) or "")
    # `null` names every write while versioning is off: the ETag still tells them apart
    null = S3Object(bucket="bkt", key="a.png", version_id="null", etag="e1")
    assert newer_version(null, _head("e2", "null"))
    assert newer_version(S3Object(bucket="bkt", key="a.png"), _head("e2", "v2")) is None
