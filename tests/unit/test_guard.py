"""The recursion guard on event data (the loop end to end is in test_producers)."""

from __future__ import annotations

import pytest

from producers.guard import RecursionGuard
from worker.contract import DEFAULT_DEST_TEMPLATE, S3Object


@pytest.mark.parametrize(
    ("template", "bucket", "key", "ours"),
    [
        (DEFAULT_DEST_TEMPLATE, "photos", "a/cat.png", False),
        (DEFAULT_DEST_TEMPLATE, "photos-upscaled", "a/cat@2x.png", True),
        (
            DEFAULT_DEST_TEMPLATE,
            "photos",
            "a/cat@2x.png",
            True,
        ),  # output written back into the source bucket
        ("s3://out/big/", "out", "big/x.png", True),
        ("s3://out/big/", "out", "small/x.png", False),
        ("s3://{bucket}/upscaled/{key}", "photos", "upscaled/x.png", True),
        ("s3://{bucket}/upscaled/{key}", "photos", "raw/x.png", False),
    ],
)
def test_locations(template: str, bucket: str, key: str, ours: bool) -> None:
    assert (RecursionGuard(template).reason(S3Object(bucket=bucket, key=key)) is not None) is ours


def test_metadata_marks_our_outputs() -> None:
    guard = RecursionGuard("s3://elsewhere/")
    obj = S3Object(bucket="photos", key="x.png")
    assert guard.reason(obj, {"Upscale-Job-Id": "uq-1"}) is not None
    assert guard.reason(obj, {"camera": "x"}) is None
