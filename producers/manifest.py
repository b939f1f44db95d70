"""Manifests in: an S3 Inventory report (`manifest.json` -> CSV.gz, Parquet or ORC data files)
or a plain `bucket,key[,version]` CSV (optionally .gz) as S3 Batch Operations takes it.

Each data file is streamed to a temp file while hashed, checked against the manifest's size and
MD5 and only then parsed, so a truncated or corrupted file enqueues nothing (a .gz list without
a checksum is decompressed once first: gzip's own CRC catches a cut file). Rows come out as
pages of `ObjectEntry` from a reader thread through a small bounded queue: memory stays flat.
A page's cursor `file:row` is where a resumed run starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gzip
import hashlib
import io
import json
import queue
import tempfile
import threading
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, Literal, cast
from urllib.parse import unquote_plus

from producers.listing import ObjectEntry, Page

Format = Literal["CSV", "Parquet", "ORC", "list"]
PAGE_ROWS = 1000
_CHUNK = 1 << 20


class ManifestError(ValueError):
    """A manifest or one of its data files is unusable (one line: the file and what to do)."""


@dataclass(frozen=True)
class DataFile:
    bucket: str
    key: str
    size: int | None = None
    md5: str | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class Manifest:
    uri: str
    format: Format
    files: tuple[DataFile, ...]
    columns: tuple[str, ...] = ()  # CSV data files have no header: the manifest's fileSchema


def split_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ManifestError(f"--manifest {uri!r}: expected s3://bucket/key of a manifest")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def _norm(column: str) -> str:
    """`LastModifiedDate`, `last_modified_date` -> `lastmodifieddate` (CSV vs Parquet/ORC)."""
    return column.strip().lower().replace("_", "")


def load_manifest(s3: Any, uri: str) -> Manifest:
    """Read `manifest.json` (an S3 Inventory report) or take a `.csv`/`.csv.gz` list as is."""
    bucket, key = split_uri(uri)
    if key.endswith((".csv", ".csv.gz")):
        return Manifest(uri, "list", (DataFile(bucket, key),))
    if not key.endswith(".json"):
        raise ManifestError(
            f"--manifest {uri}: expected an S3 Inventory manifest.json or a .csv/.csv.gz list"
        )
    body = _get(s3, bucket, key)
    _check_manifest_checksum(s3, bucket, key, body)
    try:
        doc = json.loads(body)
        fmt = str(doc["fileFormat"])
        dest = str(doc.get("destinationBucket") or bucket).rsplit(":", 1)[-1]
        files = tuple(
            DataFile(dest, str(f["key"]), int(f["size"]), str(f["MD5checksum"]).lower())
            for f in doc["files"]
        )
    except (ValueError, KeyError, TypeError) as e:
        raise ManifestError(
            f"{uri} is not an S3 Inventory manifest.json ({e!r} missing or bad)"
        ) from e
    formats: dict[str, Format] = {"csv": "CSV", "parquet": "Parquet", "orc": "ORC"}
    if fmt.lower() not in formats:
        raise ManifestError(f"{uri}: fileFormat {fmt!r} is not CSV, ORC or Parquet")
    columns = tuple(_norm(c) for c in str(doc.get("fileSchema", "")).split(","))
    if fmt.lower() == "csv" and "key" not in columns:
        raise ManifestError(f"{uri}: fileSchema {doc.get('fileSchema')!r} names no Key column")
    return Manifest(uri, formats[fmt.lower()], files, columns)


def _get(s3: Any, bucket: str, key: str) -> bytes:
    from botocore.exceptions import ClientError

    try:
        data: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NoSuchBucket"):
            raise ManifestError(f"s3://{bucket}/{key} does not exist: check --manifest") from e
        raise
    return data


def _check_manifest_checksum(s3: Any, bucket: str, key: str, body: bytes) -> None:
    """Inventory writes `manifest.checksum` (the MD5 of manifest.json) beside it: check it."""
    from botocore.exceptions import ClientError

    sibling = key[: -len(".json")] + ".checksum"
    try:
        want = s3.get_object(Bucket=bucket, Key=sibling)["Body"].read().decode().strip().lower()
    except ClientError:
        return  # none there (a hand-made manifest): nothing to check against
    if want and hashlib.md5(body, usedforsecurity=False).hexdigest() != want:
        raise ManifestError(
            f"s3://{bucket}/{key} does not match its manifest.checksum: re-copy the report"
        )


# -- one data file ----------------------------------------------------------------------------
def fetch_verified(s3: Any, f: DataFile, out: IO[bytes]) -> None:
    """Stream `f` into `out` while hashing; raise ManifestError unless size and MD5 match."""
    body = s3.get_object(Bucket=f.bucket, Key=f.key)["Body"]
    md5 = hashlib.md5(usedforsecurity=False)
    n = 0
    try:
        for chunk in body.iter_chunks(_CHUNK):
            md5.update(chunk)
            out.write(chunk)
            n += len(chunk)
    except Exception as e:  # the connection ended early (IncompleteRead and the like)
        raise ManifestError(
            f"{f.uri} could not be read whole ({e}); nothing enqueued from it"
        ) from e
    out.flush()
    if f.size is not None and n != f.size:
        raise ManifestError(
            f"{f.uri} is truncated: {n:,} of {f.size:,} bytes; nothing enqueued from it "
            "(re-copy the file or regenerate the report)"
        )
    if f.md5 and md5.hexdigest() != f.md5:
        raise ManifestError(
            f"{f.uri} fails its MD5 check (manifest {f.md5}, file {md5.hexdigest()}); "
            "nothing enqueued from it (re-copy the file or regenerate the report)"
        )


def _gzip_ok(path: str, f: DataFile) -> None:
    try:
        with gzip.open(path, "rb") as g:
            while g.read(_CHUNK):
                pass
    except (OSError, EOFError) as e:
        raise ManifestError(
            f"{f.uri} is not a whole gzip file ({e}); nothing enqueued from it"
        ) from e


def _bool(v: Any) -> bool:
    return v is True or (isinstance(v, str) and v.strip().lower() == "true")


def _size(v: Any) -> int | None:
    return int(v) if v not in (None, "") else None


def _time(v: Any) -> datetime | None:
    if v in (None, ""):
        return None
    d = v if isinstance(v, datetime) else datetime.fromisoformat(str(v))
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def _csv_columns(rows: Iterator[list[str]], columns: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    for row in rows:
        yield dict(zip(columns, row, strict=False))


def _arrow_rows(batches: Iterator[Any]) -> Iterator[dict[str, Any]]:
    for batch in batches:
        names = [_norm(n) for n in batch.schema.names]
        cols = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
        for values in zip(*cols, strict=True):
            yield dict(zip(names, values, strict=True))


def _rows(m: Manifest, path: str, f: DataFile) -> Iterator[dict[str, Any]]:
    """Raw rows of a verified file, as {normalised column: value}."""
    if m.format == "Parquet":
        import pyarrow.parquet as pq

        yield from _arrow_rows(pq.ParquetFile(path).iter_batches(batch_size=PAGE_ROWS))
    elif m.format == "ORC":
        import pyarrow.orc as orc

        reader = orc.ORCFile(path)  # a stripe at a time (inventory stripes are small)
        yield from _arrow_rows(reader.read_stripe(i) for i in range(reader.nstripes))
    else:
        if m.format == "list" and f.key.endswith(".gz"):
            _gzip_ok(path, f)
        gz = m.format == "CSV" or f.key.endswith(".gz")
        raw = cast(IO[bytes], gzip.open(path, "rb") if gz else open(path, "rb"))  # noqa: SIM115
        with raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
            columns = m.columns if m.format == "CSV" else ("bucket", "key", "versionid")
            encoded = _csv_columns(csv.reader(text), columns)
            for r in encoded:  # keys in CSV manifests are URL-encoded (Parquet/ORC: not)
                r["key"] = unquote_plus(r.get("key") or "")
                yield r


def read_file(s3: Any, m: Manifest, index: int, skip_rows: int, versions: bool) -> Iterator[Page]:
    """The pages of data file `index` (blocking: run it in a thread), after `skip_rows`."""
    f = m.files[index]
    with tempfile.NamedTemporaryFile(prefix="uq-manifest-") as tmp:
        fetch_verified(s3, f, tmp)
        entries: list[ObjectEntry] = []
        skipped: dict[str, int] = {}
        row = 0
        for row, r in enumerate(_rows(m, tmp.name, f), 1):
            if row <= skip_rows:
                continue
            reason = _leave_out(r, versions)
            if reason:
                skipped[reason] = skipped.get(reason, 0) + 1
            else:
                entries.append(
                    ObjectEntry(
                        bucket=str(r.get("bucket") or ""),
                        key=r["key"],
                        size=_size(r.get("size")),
                        modified=_time(r.get("lastmodifieddate") or r.get("lastmodified")),
                        etag=str(r.get("etag") or "").strip('"') or None,
                        version_id=str(r.get("versionid") or "") or None,
                        cursor=f"{index}:{row}",
                    )
                )
            if row % PAGE_ROWS == 0:
                yield Page(entries, f"{index}:{row}", skipped)
                entries, skipped = [], {}
        if entries or skipped or row > skip_rows:
            yield Page(entries, f"{index}:{max(row, skip_rows)}", skipped)


def _leave_out(r: dict[str, Any], versions: bool) -> str | None:
    if not r.get("key"):
        return "no key"
    if _bool(r.get("isdeletemarker")):
        return "delete marker"
    if (
        not versions
        and "islatest" in r
        and r["islatest"] not in (None, "")
        and not _bool(r["islatest"])
    ):
        return "not latest"
    return None


# -- all files, in a thread -------------------------------------------------------------------
_END = object()


class ManifestReader:
    """Every row after `cursor` (`file:row`), as pages from a reader thread, `ahead` pages
    ahead of the consumer (the whole of memory it holds)."""

    def __init__(
        self,
        s3: Any,
        manifest: Manifest,
        cursor: str = "",
        *,
        versions: bool = False,
        ahead: int = 4,
    ) -> None:
        self.s3, self.manifest, self.versions = s3, manifest, versions
        index, _, row = cursor.partition(":")
        self.start = (int(index), int(row)) if cursor else (0, 0)
        self._q: queue.Queue[Any] = queue.Queue(ahead)
        self._stop = threading.Event()

    def _produce(self) -> None:
        try:
            first, skip = self.start
            for i in range(first, len(self.manifest.files)):
                for page in read_file(
                    self.s3, self.manifest, i, skip if i == first else 0, self.versions
                ):
                    if self._stop.is_set():
                        return
                    self._q.put(page)
        except BaseException as e:  # handed to the consumer, raised there
            self._q.put(e)
        finally:
            self._q.put(_END)

    async def pages(self) -> AsyncGenerator[Page, None]:
        worker = asyncio.create_task(asyncio.to_thread(self._produce))
        try:
            while (item := await asyncio.to_thread(self._q.get)) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
            await worker
        finally:
            self._stop.set()
            with contextlib.suppress(queue.Empty):  # make room: a blocked put returns, sees stop
                while True:
                    self._q.get_nowait()
            with contextlib.suppress(BaseException):
                await worker
