"""Manifest backfill on real S3 (SeaweedFS): S3 Inventory reports in CSV.gz, Parquet and ORC
and a plain Batch Operations CSV list, versions and delete markers, checksums (a truncated or
corrupted data file enqueues nothing and fails with one line), resume, and flat memory."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.orc as orc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from redis import Redis as SyncRedis

from producers.api import Producer, build_spec
from producers.backfill import Backfill, BackfillPlan, BackfillStats, Filters
from producers.cli import main as cli
from tests.integration.conftest import Buckets, job_ids
from worker.contract import BULK_QUEUE_NAME, S3Object
from worker.settings import Settings
from worker.storage import make_s3_client

T0 = datetime(2026, 1, 1, tzinfo=UTC)
COLUMNS = ["bucket", "key", "version_id", "is_latest", "is_delete_marker", "size", "last_modified_date", "e_tag"]  # fmt: skip
CSV_SCHEMA = "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag"


def rows(bucket: str) -> list[tuple[Any, ...]]:
    """Six inventory rows: 3 images (one with a space, one older), a non-latest version, a
    delete marker and a text file."""
    return [
        (bucket, "inv/a 1.png", "v1", True, False, 100, T0, "e1"),
        (bucket, "inv/b.png", "v2", True, False, 200, T0, "e2"),
        (bucket, "inv/b.png", "v0", False, False, 150, T0, "e0"),
        (bucket, "inv/c.png", "v3", True, True, None, T0, None),
        (bucket, "inv/d.png", "v4", True, False, 300, datetime(2020, 1, 1, tzinfo=UTC), "e4"),
        (bucket, "inv/notes.txt", "v5", True, False, 10, T0, "e5"),
    ]


def data_file(fmt: str, table_rows: list[tuple[Any, ...]]) -> bytes:
    if fmt == "CSV":
        buf = io.BytesIO()
        with gzip.open(buf, "wt", newline="") as g:
            w = csv.writer(g, quoting=csv.QUOTE_ALL)
            for r in table_rows:
                b, k, v, latest, marker, size, mod, etag = r
                w.writerow(
                    [
                        b,
                        quote(k),
                        v,
                        str(latest).lower(),
                        str(marker).lower(),
                        "" if size is None else size,
                        mod.isoformat().replace("+00:00", "Z"),
                        etag or "",
                    ]
                )
        return buf.getvalue()
    table = pa.table(
        {c: [r[i] for r in table_rows] for i, c in enumerate(COLUMNS)},
        schema=pa.schema(
            [
                ("bucket", pa.string()),
                ("key", pa.string()),
                ("version_id", pa.string()),
                ("is_latest", pa.bool_()),
                ("is_delete_marker", pa.bool_()),
                ("size", pa.int64()),
                ("last_modified_date", pa.timestamp("ms", tz="UTC")),
                ("e_tag", pa.string()),
            ]
        ),
    )
    buf = io.BytesIO()
    if fmt == "Parquet":
        pq.write_table(table, buf)
    else:
        orc.write_table(table, buf)
    return buf.getvalue()


def put_inventory(
    s3: Any, bucket: str, fmt: str, parts: list[list[tuple[Any, ...]]], name: str = "inv"
) -> tuple[str, list[dict[str, Any]]]:
    files = []
    ext = {"CSV": "csv.gz", "Parquet": "parquet", "ORC": "orc"}[fmt]
    for i, part in enumerate(parts):
        body = data_file(fmt, part)
        key = f"reports/{name}/data/part-{i}.{ext}"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        files.append({"key": key, "size": len(body), "MD5checksum": hashlib.md5(body).hexdigest()})
    schema = CSV_SCHEMA if fmt == "CSV" else f"message s3.inventory {{ {' '.join(COLUMNS)} }}"
    doc = {
        "sourceBucket": bucket,
        "destinationBucket": f"arn:aws:s3:::{bucket}",
        "version": "2016-11-30",
        "fileFormat": fmt,
        "fileSchema": schema,
        "files": files,
    }
    s3.put_object(Bucket=bucket, Key=f"reports/{name}/manifest.json", Body=json.dumps(doc))
    return f"s3://{bucket}/reports/{name}/manifest.json", files


def plan(uri: str, batch: str = "m", **kw: Any) -> BackfillPlan:
    return BackfillPlan(source=uri, batch=batch, manifest=True, **kw)


async def sources(producer: Producer) -> set[tuple[str, str | None]]:
    out = set()
    for j in await job_ids(producer.redis):
        rec = await producer.status(j)
        assert rec is not None and rec.lane == "bulk"
        src = S3Object.parse(rec.source)
        out.add((src.key, (rec.payload or {})["source"]["version_id"]))
    return out


@pytest.mark.parametrize("fmt", ["CSV", "Parquet", "ORC"])
async def test_inventory_manifest_each_format(
    fmt: str, producer: Producer, settings: Settings, buckets: Buckets
) -> None:
    s3 = make_s3_client(settings.s3)
    r = rows(buckets.src)
    uri, _ = put_inventory(s3, buckets.src, fmt, [r[:3], r[3:]])
    f = Filters(include=["*.png"], since=datetime(2025, 1, 1, tzinfo=UTC))
    st = await Backfill(producer.redis, settings, s3, plan(uri, filters=f)).run()
    assert st.skipped == {"not latest": 1, "delete marker": 1, "modified": 1, "filtered": 1}
    assert (st.listed, st.enqueued, st.matched) == (6, 2, 2)
    assert await sources(producer) == {("inv/a 1.png", "v1"), ("inv/b.png", "v2")}
    # the job is the one `build_spec` makes for that object (same id: deduplicated with others)
    spec = build_spec(
        S3Object(bucket=buckets.src, key="inv/a 1.png", version_id="v1", etag="e1"),
        batch="m",
        lane="bulk",
        settings=settings,
    )
    assert await producer.status(spec.job_id) is not None
    # --versions: the older version too (never the delete marker)
    again = await Backfill(
        producer.redis, settings, s3, plan(uri, "m2", filters=f, versions=True)
    ).run()
    assert again.enqueued == 1 and again.duplicates == 2


@pytest.mark.parametrize("gz", [False, True])
async def test_plain_csv_list(
    gz: bool, producer: Producer, settings: Settings, buckets: Buckets
) -> None:
    s3 = make_s3_client(settings.s3)
    text = f"{buckets.src},list/a%20b.png\n{buckets.src},list/c%2Bd.png,ver-7\n"
    body = gzip.compress(text.encode()) if gz else text.encode()
    key = "lists/todo.csv" + (".gz" if gz else "")
    s3.put_object(Bucket=buckets.src, Key=key, Body=body)
    st = await Backfill(
        producer.redis, settings, s3, plan(f"s3://{buckets.src}/{key}", max_queue=100)
    ).run()
    assert st.enqueued == 2
    assert await sources(producer) == {("list/a b.png", None), ("list/c+d.png", "ver-7")}


@pytest.mark.parametrize("damage", ["truncated", "checksum"])
def test_damaged_data_file_enqueues_nothing(
    damage: str, settings: Settings, buckets: Buckets, stack_env: None
) -> None:
    s3 = make_s3_client(settings.s3)
    redis = SyncRedis.from_url(settings.redis.url)
    redis.flushdb()
    r = rows(buckets.src)
    good = [(buckets.src, f"ok/{i}.png", None, True, False, 64, T0, "e") for i in range(5)]
    uri, files = put_inventory(s3, buckets.src, "CSV", [good, r[:3]])
    body = data_file("CSV", r[:3])
    bad = body[: len(body) // 2] if damage == "truncated" else body[:-1] + bytes([body[-1] ^ 1])
    s3.put_object(Bucket=buckets.src, Key=files[1]["key"], Body=bad)
    # the CLI: one line naming the file, exit 2, no traceback; the good file before it is in,
    # nothing of the damaged one
    out = CliRunner().invoke(cli, ["backfill", "--manifest", uri, "--no-skip-existing"])
    assert out.exit_code == 2, out.output
    line = out.output.strip().splitlines()[-1]
    assert line.startswith("error: ") and files[1]["key"] in line, line
    assert ("truncated" if damage == "truncated" else "MD5") in line
    assert "Traceback" not in out.output
    assert redis.zcard(BULK_QUEUE_NAME) == 5
    redis.close()


async def test_manifest_resumes_from_file_and_row(
    producer: Producer, settings: Settings, buckets: Buckets
) -> None:
    s3 = make_s3_client(settings.s3)
    part = [(buckets.src, f"r/{i:04d}.png", None, True, False, 64, T0, f"e{i}") for i in range(30)]
    uri, _ = put_inventory(s3, buckets.src, "Parquet", [part[:12], part[12:]])

    class Interrupted(Exception):
        pass

    def stop(st: BackfillStats) -> None:
        if st.enqueued >= 15:
            raise Interrupted

    p = plan(uri, chunk=5)
    with pytest.raises(Interrupted):
        await Backfill(producer.redis, settings, s3, p, stop).run()
    st = await Backfill(producer.redis, settings, s3, p).run()
    assert st.resumed_from.startswith("1:")  # second data file, a row inside it
    assert st.enqueued + 15 == 30 and st.duplicates == 0
    assert await producer.redis.zcard(BULK_QUEUE_NAME) == 30


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


async def test_large_manifest_flat_memory(
    producer: Producer, settings: Settings, buckets: Buckets
) -> None:
    """100,000 rows in 2 CSV.gz files: memory at the end within a few MB of the first tick."""
    s3 = make_s3_client(settings.s3)
    n = 100_000
    part = [(buckets.src, f"big/{i:07d}.png", None, True, False, 64, T0, "e") for i in range(n)]
    uri, _ = put_inventory(s3, buckets.src, "CSV", [part[: n // 2], part[n // 2 :]])
    del part
    samples: list[float] = []
    st = await Backfill(
        producer.redis,
        settings,
        s3,
        plan(uri, max_queue=10 * n, skip_existing=False),
        lambda _s: samples.append(_rss_mb()),
    ).run()
    assert st.enqueued == n
    early = max(samples[: len(samples) // 10])
    assert max(samples) - early < 25, (early, max(samples))
