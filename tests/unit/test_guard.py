"""The recursion guard on event data (the loop end to end is in
tests/integration/test_recursion_guard.py): ours by metadata and location, never by name alone."""

from __future__ import annotations

import pytest

from producers.guard import AMBIGUOUS, RecursionGuard
from worker.contract import DEFAULT_DEST_TEMPLATE, S3Object, render_destination

SAME_BUCKET = "s3://{bucket}/{key_stem}@2x.{ext}"


@pytest.mark.parametrize(
    ("template", "bucket", "key", "ours"),
    [
        (DEFAULT_DEST_TEMPLATE, "photos", "a/cat.png", False),
        (DEFAULT_DEST_TEMPLATE, "photos-upscaled", "a/cat@2x.png", True),
        # a retina asset a user uploaded: outputs go to photos-upscaled, so it is a source
        (DEFAULT_DEST_TEMPLATE, "photos", "a/cat@2x.png", False),
        (DEFAULT_DEST_TEMPLATE, "photos", "logo@2x.png", False),
        ("s3://out/big/", "out", "big/x.png", True),
        ("s3://out/big/", "out", "small/x.png", False),
        ("s3://{bucket}/upscaled/{key}", "photos", "upscaled/x.png", True),
        ("s3://{bucket}/upscaled/{key}", "photos", "raw/x.png", False),
        ("s3://{bucket}/upscaled/{key}", "photos", "raw/x@2x.png", False),
        ("s3://photos/.upscale-staging/x", "any", ".upscale-staging/abc.png", True),
        (DEFAULT_DEST_TEMPLATE, "photos", ".upscale-reports/b/manifest.json", True),
    ],
)
def test_locations(template: str, bucket: str, key: str, ours: bool) -> None:
    assert (RecursionGuard(template).reason(S3Object(bucket=bucket, key=key)) is not None) is ours


def test_outputs_among_the_sources_are_decided_by_metadata() -> None:
    """Same bucket, no prefix of their own: the destination location IS the name pattern, so a
    key of that shape is ambiguous (the caller HEADs it) and its metadata decides."""
    guard = RecursionGuard(SAME_BUCKET)
    retina = S3Object(bucket="photos", key="img/logo@2x.png")
    assert guard.locate(retina) == AMBIGUOUS  # AWS events carry no metadata
    assert guard.reason(retina) is None  # not proof alone: let the HEAD (or worker) decide
    assert guard.locate(retina, {"upscale-job-id": "uq-1"}) is not None  # ours
    assert guard.locate(retina, {"camera": "x"}) is None  # the event had metadata: not ours
    assert guard.locate(S3Object(bucket="photos", key="img/logo.png")) is None  # no HEAD
    assert guard.locate(S3Object(bucket="photos", key="img/logo@3x.png")) is None


def test_dirname_template_shape_includes_root_keys() -> None:
    guard = RecursionGuard("s3://{bucket}/{dirname}/2x/{basename}")
    for key in ("2x/root.png", "src/2x/root.png", "a/b/2x/c.jpg"):
        assert guard.locate(S3Object(bucket="src", key=key)) == AMBIGUOUS, key
    assert guard.locate(S3Object(bucket="src", key="src/root.png")) is None


def test_root_key_dirname_renders_without_double_slash() -> None:
    tpl = "s3://{bucket}/{dirname}/2x/{basename}"
    assert render_destination(tpl, S3Object(bucket="src", key="root.png")).uri == (
        "s3://src/2x/root.png"
    )
    assert render_destination(tpl, S3Object(bucket="src", key="a/b.png")).uri == (
        "s3://src/a/2x/b.png"
    )


def test_metadata_marks_our_outputs() -> None:
    guard = RecursionGuard("s3://elsewhere/")
    obj = S3Object(bucket="photos", key="x.png")
    assert guard.reason(obj, {"Upscale-Job-Id": "uq-1"}) is not None
    assert guard.reason(obj, {"X-Amz-Meta-Upscale-Job-Id": "uq-1"}) is not None  # MinIO
    assert guard.reason(obj, {"camera": "x"}) is None


def test_extra_prefixes_and_report_uri() -> None:
    guard = RecursionGuard(
        DEFAULT_DEST_TEMPLATE, ("s3://cdn/out/",), report_uri="s3://ops/reports/"
    )
    assert "UPSCALE_GUARD_PREFIXES" in (guard.reason(S3Object(bucket="cdn", key="out/a.png")) or "")
    assert "report" in (guard.reason(S3Object(bucket="ops", key="reports/b/m.json")) or "")
    assert guard.reason(S3Object(bucket="ops", key="other/a.png")) is None
