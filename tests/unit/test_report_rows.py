"""The completion report's layout (pure): rows from ledger records, CSV, part keys, manifest."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from worker.contract import JobState
from worker.report.rows import (
    COLUMNS,
    FIELDS,
    FORMAT,
    SCHEMA,
    Part,
    Totals,
    csv_bytes,
    in_scope,
    iso_ms,
    manifest,
    manifest_bytes,
    part_key,
    row_from,
    usd,
)


def record(**fields: str) -> list[bytes | None]:
    """HMGET's answer for a record holding `fields` (bytes, None where absent)."""
    return [fields[f].encode() if f in fields else None for f in FIELDS]


def parse(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode())))


def test_a_failed_row_has_its_error_and_a_url_encoded_key() -> None:
    row = row_from(
        "uq-1",
        record(
            state="failed",
            source='s3://photos/dir/a, b "c" é+1.png',
            source_version="v7",
            dest='s3://photos-upscaled/dir/a, b "c" é+1@2x.png',
            cost_micros="0",
            error_class="InvalidImage",
            error='not an image: "cannot identify",\nline 2',
            failed_at="1554486519725",
        ),
    )
    assert row is not None
    cells = dict(zip(COLUMNS, row.cells(), strict=True))
    assert cells == {
        "Bucket": "photos",
        "Key": "dir/a%2C%20b%20%22c%22%20%C3%A9%2B1.png",
        "VersionId": "v7",
        "Destination": 's3://photos-upscaled/dir/a, b "c" é+1@2x.png',
        "TaskStatus": "failed",
        "CostUSD": "0.000000",
        "PossibleCostUSD": "0.000000",
        "ErrorCode": "InvalidImage",
        "ResultMessage": 'not an image: "cannot identify",\nline 2',
        "JobId": "uq-1",
        "FinishedAt": "2019-04-05T17:48:39.725Z",
    }
    # quoted as RFC 4180: commas, quotes and newlines survive a CSV reader
    assert parse(csv_bytes([row])) == [row.cells()]
    # the first three columns are a Batch Operations manifest row as they are
    assert (
        csv_bytes([row]).decode().startswith("photos,dir/a%2C%20b%20%22c%22%20%C3%A9%2B1.png,v7,")
    )


def test_succeeded_and_skipped_rows() -> None:
    ok = row_from(
        "uq-2",
        record(
            state="succeeded",
            source="s3://b/k.jpg",
            dest="s3://b-upscaled/k@2x.jpg",
            cost_micros="60000",
            possible_micros="1500",
            succeeded_at="1700000000001",
            failed_at="1600000000000",  # an earlier run's: the current state's time counts
        ),
    )
    assert ok is not None
    assert ok.cells()[4:9] == ["succeeded", "0.060000", "0.001500", "", ""]
    assert ok.cells()[10] == iso_ms(1_700_000_000_001)
    skipped = row_from(
        "uq-3", record(state="skipped", source="s3://b/x.png", note="output exists already")
    )
    assert skipped is not None and skipped.message == "output exists already"
    assert skipped.cells()[2] == "" and skipped.cells()[10] == ""  # compacted: no end time
    failed = row_from("uq-5", record(state="failed", source="s3://b/y.png", updated_at="999"))
    assert failed is not None and failed.cells()[10] == "1970-01-01T00:00:00.999Z"


@pytest.mark.parametrize("state", [None, "queued", "running", "waiting"])
def test_gone_or_running_records_have_no_row(state: str | None) -> None:
    fields = {"source": "s3://b/k.png"} | ({"state": state} if state else {})
    assert row_from("uq-4", record(**fields)) is None


def test_failed_only_is_every_state_but_succeeded() -> None:
    S = JobState
    assert [
        s for s in (S.SUCCEEDED, S.FAILED, S.SKIPPED, S.CANCELLED) if in_scope(s, "FailedTasksOnly")
    ] == [
        "failed",
        "skipped",
        "cancelled",
    ]
    assert in_scope(S.SUCCEEDED, "AllTasks")


def test_usd_is_exact() -> None:
    assert usd(0) == "0.000000"
    assert usd(60_000) == "0.060000"
    assert usd(1_234_567_891) == "1234.567891"
    assert usd(-5) == "-0.000005"


def test_manifest_has_the_batch_operations_shape() -> None:
    FAILED, SUCCEEDED = JobState.FAILED, JobState.SUCCEEDED
    totals = Totals()
    for v in (
        record(state="succeeded", source="s3://b/1.png", cost_micros="60000"),
        record(state="succeeded", source="s3://b/2.png", cost_micros="60000"),
        record(state="failed", source="s3://b/3.png", possible_micros="60000"),
    ):
        row = row_from("uq", v)
        assert row is not None
        totals.add(row)
    parts = [
        Part(FAILED, "out", part_key(".upscale-reports/n/", FAILED, 1), "ab" * 16, 1, 90),
        Part(SUCCEEDED, "out", part_key(".upscale-reports/n/", SUCCEEDED, 1), "cd" * 16, 2, 99),
    ]
    doc = manifest(
        batch="n", scope="AllTasks", parts=parts, totals=totals, created_ms=1554486519725
    )
    assert doc["Format"] == FORMAT
    assert doc["ReportCreationDate"] == "2019-04-05T17:48:39.725Z"
    assert doc["Results"] == [
        {
            "TaskExecutionStatus": "failed",
            "Bucket": "out",
            "MD5Checksum": "ab" * 16,
            "Key": ".upscale-reports/n/results/failed-00001.csv.gz",
            "Rows": 1,
        },
        {
            "TaskExecutionStatus": "succeeded",
            "Bucket": "out",
            "MD5Checksum": "cd" * 16,
            "Key": ".upscale-reports/n/results/succeeded-00001.csv.gz",
            "Rows": 2,
        },
    ]
    assert doc["ReportSchema"] == SCHEMA == ", ".join(COLUMNS)
    assert SCHEMA.startswith("Bucket, Key, VersionId, ")
    assert (doc["ReportScope"], doc["Batch"]) == ("AllTasks", "n")
    assert doc["Rows"] == {"failed": 1, "succeeded": 2}
    assert (doc["CostUSD"], doc["PossibleCostUSD"]) == ("0.120000", "0.060000")
    assert json.loads(manifest_bytes(doc)) == doc
    assert list(doc)[:4] == ["Format", "ReportCreationDate", "Results", "ReportSchema"]


def test_iso_ms() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", iso_ms(0))
    assert iso_ms(999) == "1970-01-01T00:00:00.999Z"
