"""The report's layout, pure: which record fields a row reads, the row, a part's CSV bytes, the
parts' keys and the manifest.

The manifest has the shape of an S3 Batch Operations completion report's (`Format`,
`ReportCreationDate`, `Results[{TaskExecutionStatus, Bucket, MD5Checksum, Key}]`,
`ReportSchema`) with our columns; parts hold one state each, as Batch Operations keeps
succeeded and failed tasks apart. Like its CSVs the parts have no header row (the schema is in
the manifest) and the key is URL-encoded, so the first three columns are a Batch Operations
manifest row (bucket, key, version id) as they are.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from worker.contract import FINAL_STATES, JobState, s3_key_quote

FORMAT = "UpscaleQueue_Report_CSV_GZIP_1"
Scope = Literal["AllTasks", "FailedTasksOnly"]  # Batch Operations' `ReportScope` words
COLUMNS = (
    "Bucket",
    "Key",
    "VersionId",
    "Destination",
    "TaskStatus",
    "CostUSD",
    "PossibleCostUSD",
    "ErrorCode",
    "ResultMessage",
    "JobId",
    "FinishedAt",
)
SCHEMA = ", ".join(COLUMNS)
# The record fields a row reads (HMGET, in this order): what a compacted final record keeps.
# Its end time: `<state>_at`, else `updated_at` (set by the final transition); a record
# compacted down to neither has none (the report's date stands for it).
FIELDS = (
    "state",
    "source",
    "source_version",
    "dest",
    "cost_micros",
    "possible_micros",
    "error_class",
    "error",
    "note",
    "updated_at",
    *(f"{s}_at" for s in sorted(FINAL_STATES)),
)
_AT = {s: FIELDS.index(f"{s}_at") for s in FINAL_STATES}


@dataclass(frozen=True)
class Row:
    job_id: str
    state: JobState
    bucket: str
    key: str
    version_id: str
    dest: str
    cost_micros: int
    possible_micros: int
    error_class: str
    message: str
    finished_ms: int | None

    def cells(self) -> list[str]:
        return [
            self.bucket,
            s3_key_quote(self.key),
            self.version_id,
            self.dest,
            self.state,
            usd(self.cost_micros),
            usd(self.possible_micros),
            self.error_class,
            self.message,
            self.job_id,
            iso_ms(self.finished_ms) if self.finished_ms is not None else "",
        ]


def row_from(job_id: str, values: Sequence[bytes | str | None]) -> Row | None:
    """The row of one record from its `FIELDS` values; None if the record is gone or not final
    (a job run again since it ended: the next report has it)."""
    v = [x.decode() if isinstance(x, bytes) else (x or "") for x in values]
    if v[0] not in FINAL_STATES:
        return None
    state = JobState(v[0])
    bucket, _, key = v[1].removeprefix("s3://").partition("/")
    at = v[_AT[state]] or v[FIELDS.index("updated_at")]
    return Row(
        job_id=job_id,
        state=state,
        bucket=bucket,
        key=key,
        version_id=v[2],
        dest=v[3],
        cost_micros=int(v[4] or 0),
        possible_micros=int(v[5] or 0),
        error_class=v[6],
        # a failed job's error; why a job was skipped or cancelled
        message=v[7] or v[8],
        finished_ms=int(at) if at else None,
    )


def in_scope(state: JobState, scope: Scope) -> bool:
    """Failed-only: every row whose state is not `succeeded`."""
    return scope == "AllTasks" or state != JobState.SUCCEEDED


def csv_bytes(rows: Iterable[Row]) -> bytes:
    """Rows as RFC 4180 CSV (quoted where needed, CRLF line ends), UTF-8."""
    buf = io.StringIO()
    w = csv.writer(buf)
    for r in rows:
        w.writerow(r.cells())
    return buf.getvalue().encode()


def usd(micros: int) -> str:
    """Exact: micro-USD as dollars with six decimals, no float on the way."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), 1_000_000)
    return f"{sign}{whole}.{frac:06d}"


def iso_ms(ms: int) -> str:
    """`2019-04-05T17:48:39.725Z`, as `ReportCreationDate` is written."""
    t = datetime.fromtimestamp(ms / 1000, UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def part_key(prefix: str, state: JobState, n: int) -> str:
    """`<prefix>results/<state>-00001.csv.gz`: parts of one state numbered from 1."""
    return f"{prefix}results/{state}-{n:05d}.csv.gz"


@dataclass(frozen=True)
class Part:
    """One written part, as the manifest lists it."""

    state: JobState
    bucket: str
    key: str
    md5: str
    rows: int
    bytes: int


@dataclass
class Totals:
    """Rows per state and their spend; records skipped (gone, or running again)."""

    rows: dict[JobState, int] = field(default_factory=dict)
    cost_micros: int = 0
    possible_micros: int = 0
    skipped_records: int = 0

    def add(self, r: Row) -> None:
        self.rows[r.state] = self.rows.get(r.state, 0) + 1
        self.cost_micros += r.cost_micros
        self.possible_micros += r.possible_micros

    @property
    def count(self) -> int:
        return sum(self.rows.values())


def manifest(
    *, batch: str, scope: Scope, parts: Sequence[Part], totals: Totals, created_ms: int
) -> dict[str, Any]:
    """The `manifest.json` document: Batch Operations' keys first, then ours."""
    return {
        "Format": FORMAT,
        "ReportCreationDate": iso_ms(created_ms),
        "Results": [
            {
                "TaskExecutionStatus": p.state,
                "Bucket": p.bucket,
                "MD5Checksum": p.md5,
                "Key": p.key,
                "Rows": p.rows,
            }
            for p in parts
        ],
        "ReportSchema": SCHEMA,
        "ReportScope": scope,
        "Batch": batch,
        "Rows": dict(sorted(totals.rows.items())),
        "CostUSD": usd(totals.cost_micros),
        "PossibleCostUSD": usd(totals.possible_micros),
    }


def manifest_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2, ensure_ascii=False).encode()
