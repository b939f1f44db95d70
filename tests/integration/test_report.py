"""Completion reports end to end: a batch run by a real worker against the simulator, its report
written when it ends (manifest.json + gzipped CSV parts in S3, read back with boto3), the rows
against the ledger, failed-only, `upscale report`, and the records' retention after it."""

from __future__ import annotations

import asyncio
import csv
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
from typing import Any
from urllib.parse import unquote

from arq.constants import result_key_prefix
from redis.asyncio import Redis

from infra.stack import LocalStack
from producers.api import Producer
from producers.intake import guard_for
from tests.integration.conftest import Buckets, Sim, drain, put
from tests.support import png
from worker.contract import S3Object
from worker.keys import Keys
from worker.report.parts import GzipObject
from worker.report.rows import COLUMNS
from worker.report.writer import write_report
from worker.settings import Settings
from worker.storage import Storage

NOT_AN_IMAGE = b"just some text, not an image"


async def run_batch(
    stack: LocalStack, producer: Producer, buckets: Buckets, batch: str, keys: list[str]
) -> dict[str, str]:
    """Enqueue `keys` (those named `broken*` are not images) as `batch`; job id by key."""
    ids = {}
    for k in keys:
        put(stack, buckets.src, k, NOT_AN_IMAGE if k.startswith("broken") else png(16, 12))
        ids[k] = (await producer.enqueue(f"s3://{buckets.src}/{k}", batch=batch)).job_id
    return ids


def read_report(
    stack: LocalStack, bucket: str, manifest_key: str
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The manifest and every row of its parts (MD5 checked), as boto3 reads them."""
    s3 = stack.s3_client()
    doc = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    rows = []
    for part in doc["Results"]:
        body = s3.get_object(Bucket=part["Bucket"], Key=part["Key"])["Body"].read()
        assert hashlib.md5(body).hexdigest() == part["MD5Checksum"]
        lines = list(csv.reader(io.StringIO(gzip.decompress(body).decode())))
        assert len(lines) == part["Rows"]
        for cells in lines:
            row = dict(zip(COLUMNS, cells, strict=True))
            assert row["TaskStatus"] == part["TaskExecutionStatus"]
            rows.append(row)
    return doc, rows


async def ledger(redis: Redis, job_id: str) -> dict[str, str]:
    h = await redis.hgetall(Keys.job(job_id))  # type: ignore[misc]  # redis-py's async stubs
    return {k.decode(): v.decode() for k, v in h.items()}


async def test_a_batch_that_ends_gets_its_report(
    stack: LocalStack,
    sim: Sim,
    settings: Settings,
    producer: Producer,
    redis: Redis,
    buckets: Buckets,
) -> None:
    ids = await run_batch(
        stack, producer, buckets, "spring", ["a.png", "dir/b, c é+1.png", "d.png", "broken.png"]
    )
    await drain(settings)  # the upscale jobs, then the report job their batch's end queued

    manifest_key = ".upscale-reports/spring/manifest.json"
    doc, rows = read_report(stack, buckets.dest, manifest_key)
    assert doc["Format"] == "UpscaleQueue_Report_CSV_GZIP_1" and doc["Batch"] == "spring"
    assert doc["ReportScope"] == "AllTasks" and doc["ReportSchema"].startswith("Bucket, Key, ")
    assert doc["Rows"] == {"failed": 1, "succeeded": 3}
    assert doc["CostUSD"] == "0.180000"
    assert [p["Key"] for p in doc["Results"]] == [
        ".upscale-reports/spring/results/failed-00001.csv.gz",
        ".upscale-reports/spring/results/succeeded-00001.csv.gz",
    ]
    by_id = {r["JobId"]: r for r in rows}
    assert set(by_id) == set(ids.values())
    for key, job_id in ids.items():
        row, rec = by_id[job_id], await ledger(redis, job_id)
        assert (row["Bucket"], unquote(row["Key"])) == (buckets.src, key)
        assert row["Destination"] == rec["dest"] and row["TaskStatus"] == rec["state"]
        assert row["CostUSD"] == f"{int(rec.get('cost_micros', 0)) / 1e6:.6f}"
        assert row["ErrorCode"] == rec.get("error_class", "")
        assert row["ResultMessage"] == rec.get("error", "")
        assert row["VersionId"] == ""
        # the end time, unless the ledger compacted it away (the report's date stands for it)
        assert row["FinishedAt"] == "" or row["FinishedAt"].endswith("Z")
    assert by_id[ids["broken.png"]]["ErrorCode"] == "InvalidImage"
    assert by_id[ids["a.png"]]["CostUSD"] == "0.060000"

    # once per batch end: one report job ran (arq keeps its result to refuse a second)
    assert len(await redis.keys(result_key_prefix + "report:batch:spring:*")) == 1
    # the records expire after the retention, and so does the done list
    retention_ms = settings.jobs.ledger_retention_s * 1000
    for job_id in ids.values():
        assert 0 < await redis.pttl(Keys.job(job_id)) <= retention_ms
    assert 0 < await redis.pttl(Keys.batch_done("spring")) <= retention_ms
    # a report is never taken for a source
    guard = guard_for(producer)
    for key in [manifest_key, *(p["Key"] for p in doc["Results"])]:
        assert guard.reason(S3Object(bucket=buckets.dest, key=key)) is not None


async def test_failed_only_and_records_that_hold_money(
    stack: LocalStack,
    sim: Sim,
    settings: Settings,
    producer: Producer,
    redis: Redis,
    buckets: Buckets,
) -> None:
    ids = await run_batch(stack, producer, buckets, "b2", ["x.png", "y.png", "broken-1.png"])
    await drain(settings)

    failed = await producer.report("b2", failed_only=True)
    assert failed.manifest == f"s3://{buckets.dest}/.upscale-reports/b2/failed-only/manifest.json"
    assert failed.scope == "FailedTasksOnly" and failed.rows == {"failed": 1}
    assert failed.expiring is None  # a failed-only report starts no retention
    doc, rows = read_report(stack, buckets.dest, ".upscale-reports/b2/failed-only/manifest.json")
    assert doc["ReportScope"] == "FailedTasksOnly"
    assert [r["JobId"] for r in rows] == [ids["broken-1.png"]]

    # As the ledger leaves them: a call possibly billed, and a failed job's paid result kept
    # 10 days for `upscale retry`. The records start without a TTL (before any report).
    for job_id in ids.values():
        await redis.persist(Keys.job(job_id))
    await redis.hset(Keys.job(ids["x.png"]), "possible_micros", "60000")  # type: ignore[misc]
    await redis.set(Keys.paid(ids["broken-1.png"]), "{}", px=10 * 86_400_000)

    r = await producer.report("b2", to=f"s3://{buckets.dest}/audit/b2/")
    assert r.manifest == f"s3://{buckets.dest}/audit/b2/manifest.json" and r.ended
    assert r.rows == {"failed": 1, "succeeded": 2} and r.possible_cost_usd == "0.060000"
    assert r.expiring == 2
    assert await redis.pttl(Keys.job(ids["x.png"])) == -1  # holds money: never expires
    assert await redis.pttl(Keys.job(ids["broken-1.png"])) > 9 * 86_400_000  # as its paid result
    assert 0 < await redis.pttl(Keys.job(ids["y.png"])) <= settings.jobs.ledger_retention_s * 1000


async def test_parts_roll_over_and_a_rerun_overwrites_the_same_keys(
    stack: LocalStack,
    sim: Sim,
    settings: Settings,
    producer: Producer,
    redis: Redis,
    buckets: Buckets,
) -> None:
    ids = await run_batch(stack, producer, buckets, "b3", [f"{i}.png" for i in range(5)])
    await drain(settings)
    storage = Storage(settings.s3)
    pages: list[tuple[int, int]] = []
    r = await write_report(
        redis, storage, settings, "b3", rows_per_part=2, page=3, progress=lambda *a: pages.append(a)
    )
    assert pages == [(3, 5), (5, 5)]
    assert [(p.key.rsplit("/", 1)[1], p.rows) for p in r.parts] == [
        ("succeeded-00001.csv.gz", 2),
        ("succeeded-00002.csv.gz", 2),
        ("succeeded-00003.csv.gz", 1),
    ]
    _, rows = read_report(stack, buckets.dest, ".upscale-reports/b3/manifest.json")
    assert sorted(r["JobId"] for r in rows) == sorted(ids.values())

    again = await write_report(redis, storage, settings, "b3")
    assert [p.rows for p in again.parts] == [5] and again.manifest == r.manifest
    listed = stack.s3_client().list_objects_v2(Bucket=buckets.dest, Prefix=".upscale-reports/b3/")
    assert sorted(o["Key"] for o in listed["Contents"]) == [
        ".upscale-reports/b3/manifest.json",
        ".upscale-reports/b3/results/succeeded-00001.csv.gz",  # the former run's 2 and 3: gone
    ]


async def test_a_big_part_streams_as_a_multipart_upload(
    stack: LocalStack, settings: Settings, buckets: Buckets
) -> None:
    data = os.urandom(3 * 1024 * 1024) * 4  # 12 MiB that gzip cannot shrink much
    obj = GzipObject(Storage(settings.s3), buckets.dest, "big.csv.gz", metadata={"k": "v"})
    for i in range(0, len(data), 1024 * 1024):
        await obj.write(data[i : i + 1024 * 1024])
    md5 = await obj.close()
    got = stack.s3_client().get_object(Bucket=buckets.dest, Key="big.csv.gz")
    body = got["Body"].read()
    assert "-" in got["ETag"]  # a multipart upload's ETag
    assert hashlib.md5(body).hexdigest() == md5 and len(body) == obj.size
    assert gzip.decompress(body) == data and got["Metadata"] == {"k": "v"}


async def test_upscale_report_prints_a_summary_and_the_location(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    await run_batch(stack, producer, buckets, "b4", ["p.png", "broken.png"])
    await drain(settings)
    env = {**os.environ, **stack.env()}

    def upscale(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "producers.cli", *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)

    out = await asyncio.to_thread(upscale, "report", "--batch", "b4")
    assert out.returncode == 0, out.stderr
    location = f"s3://{buckets.dest}/.upscale-reports/b4/manifest.json"
    assert "b4: 2 rows (1 failed, 1 succeeded), cost $0.060000" in out.stdout
    assert f"report: {location} (2 part(s))" in out.stdout
    assert "records expire in " in out.stdout

    out = await asyncio.to_thread(upscale, "report", "--batch", "b4", "--failed-only", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["manifest"] == location.replace("manifest.json", "failed-only/manifest.json")
    assert doc["rows"] == {"failed": 1} and doc["row_count"] == 1

    out = await asyncio.to_thread(upscale, "report", "--batch", "nope")
    assert out.returncode == 1 and out.stderr.strip() == "error: no such batch: nope"
