"""S3 answers' dates: a fast path for HTTP dates, botocore's parser for everything else."""

from __future__ import annotations

from datetime import UTC, datetime

from botocore.utils import parse_timestamp

from worker.storage import _timestamp


def test_dates_read_as_botocore_reads_them() -> None:
    for value in ("Tue, 01 Dec 2026 22:08:39 GMT", "2026-12-01T22:08:39.000Z", "1796162919"):
        assert _timestamp(value) == parse_timestamp(value)
    assert _timestamp("Tue, 01 Dec 2026 22:08:39 GMT") == datetime(
        2026, 12, 1, 22, 8, 39, tzinfo=UTC
    )
