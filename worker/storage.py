"""S3 in and out: head, presign, bounded reads, and streaming (multipart) uploads.

boto3 is synchronous: every call runs in a thread so the event loop keeps serving other jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.utils import parse_timestamp

from worker.contract import S3Object
from worker.settings import S3Settings

_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchVersion", "NoSuchBucket"}
_DENIED = {"403", "AccessDenied", "Forbidden", "AllAccessDisabled", "InvalidObjectState"}
# The request itself is refused: retrying the same write cannot help.
_REJECTED = {
    "InvalidRequest",
    "InvalidArgument",
    "MetadataTooLarge",
    "EntityTooLarge",
    "InvalidBucketName",
    "KeyTooLongError",
    "InvalidStorageClass",
    "InvalidDigest",
    "InvalidRange",
}


class StorageError(Exception):
    pass


class SourceMissing(StorageError):
    """The object (or its bucket/version) does not exist: a permanent failure."""


class AccessDenied(StorageError):
    """We may not read/write it: a permanent failure until someone fixes IAM."""


class StorageRejected(StorageError):
    """S3 refuses the request itself (bad metadata, size, storage class): a permanent failure."""


class DestinationChanged(StorageError):
    """A conditional write found the destination not as this run last saw it (412): another
    writer (a newer run, a newer version's job) stored there meanwhile; nothing was written."""


class StorageUnavailable(StorageError):
    """S3 is down, throttling or unreachable: wait and retry, never a failed try."""


def _timestamp(value: Any) -> Any:
    """botocore's timestamp parser, with a fast path for S3's HTTP dates (`Last-Modified`
    on every HEAD and GET): its general parser (dateutil) is a tenth of such a call's CPU."""
    if isinstance(value, str) and value.endswith("GMT"):
        with contextlib.suppress(TypeError, ValueError):
            return parsedate_to_datetime(value)
    return parse_timestamp(value)


def make_s3_client(settings: S3Settings, *, fail_fast: bool = False) -> Any:
    """An S3 client. The region is `UPSCALE_S3_REGION` when set, else `AWS_REGION` (which
    other AWS SDKs read and botocore does not), else boto3's own chain (`AWS_DEFAULT_REGION`,
    the profile's region). `fail_fast`: one short attempt, for checks a person waits on."""
    kwargs: dict[str, Any] = {
        "config": Config(
            s3={"addressing_style": settings.addressing_style},
            signature_version="s3v4",
            retries={"max_attempts": 1 if fail_fast else 3, "mode": "standard"},
            max_pool_connections=settings.max_pool_connections,
            connect_timeout=2 if fail_fast else 5,
            read_timeout=4 if fail_fast else 60,
        ),
    }
    region = settings.region or os.environ.get("AWS_REGION")
    if region:
        kwargs["region_name"] = region
    if settings.endpoint_url:
        kwargs["endpoint_url"] = settings.endpoint_url
    if settings.access_key_id and settings.secret_access_key:
        kwargs["aws_access_key_id"] = settings.access_key_id
        kwargs["aws_secret_access_key"] = settings.secret_access_key.get_secret_value()
    core = botocore.session.get_session()
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_timestamp)
    return boto3.session.Session(botocore_session=core).client("s3", **kwargs)


def classify(exc: Exception, what: str) -> StorageError:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in ("412", "409"):
            return DestinationChanged(
                f"{what}: the destination changed meanwhile ({code or status})"
            )
        if code in _NOT_FOUND or status == "404":
            return SourceMissing(f"{what}: not found ({code or status})")
        if code in _DENIED or status == "403":
            return AccessDenied(f"{what}: access denied ({code or status})")
        if code in _REJECTED:
            message = str(err.get("Message", ""))[:200]
            return StorageRejected(
                f"{what}: S3 refused it ({code}{': ' + message if message else ''})"
            )
        return StorageUnavailable(f"{what}: S3 error {code or status}")
    return StorageUnavailable(f"{what}: S3 unreachable ({type(exc).__name__})")


class Unknown(enum.Enum):
    """A destination this writer has not looked at: its write is unconditional."""

    UNKNOWN = "unknown"


UNKNOWN = Unknown.UNKNOWN


def _condition(expect: str | Unknown | None) -> dict[str, str]:
    if expect is UNKNOWN:
        return {}
    if expect is None:
        return {"IfNoneMatch": "*"}
    return {"IfMatch": f'"{expect}"'}


@dataclass(frozen=True)
class Head:
    size: int
    etag: str
    content_type: str | None
    metadata: dict[str, str]
    version_id: str | None


@dataclass(frozen=True)
class Stored:
    etag: str
    size: int


def _head(r: dict[str, Any]) -> Head:
    """What a HEAD or a GET says about the object."""
    return Head(
        size=int(r.get("ContentLength", 0)),
        etag=str(r.get("ETag", "")).strip('"'),
        content_type=r.get("ContentType"),
        metadata={k.lower(): v for k, v in (r.get("Metadata") or {}).items()},
        version_id=r.get("VersionId"),
    )


class Storage:
    def __init__(self, settings: S3Settings, client: Any | None = None) -> None:
        self.settings = settings
        self.s3 = client or make_s3_client(settings)

    async def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, **kwargs)
        except (ClientError, BotoCoreError) as e:
            raise classify(e, what) from None

    @staticmethod
    def _version(obj: S3Object) -> dict[str, str]:
        return {"VersionId": obj.version_id} if obj.version_id else {}

    async def head(self, obj: S3Object) -> Head | None:
        try:
            r = await self._call(
                f"head {obj.uri}",
                self.s3.head_object,
                Bucket=obj.bucket,
                Key=obj.key,
                **self._version(obj),
            )
        except SourceMissing:
            return None
        return _head(r)

    async def head_current(self, obj: S3Object) -> Head | None:
        """The key's current version (a HEAD without `VersionId`, whatever `obj` names): None
        when there is none (deleted; in a versioned bucket, a delete marker)."""
        return await self.head(S3Object(bucket=obj.bucket, key=obj.key))

    async def read_checked(
        self,
        obj: S3Object,
        *,
        max_bytes: int,
        check: Callable[[Head], None] | None = None,
        byte_range: str | None = None,
    ) -> tuple[Head, bytes]:
        """One GET: `check(head)` sees the object's size, ETag and metadata before its body is
        read (it raises to refuse it); then at most `max_bytes` + 1 bytes are read."""
        extra: dict[str, Any] = {"Range": byte_range} if byte_range else {}

        def get() -> tuple[Head, bytes]:  # one thread hop for the request and its body
            r = self.s3.get_object(Bucket=obj.bucket, Key=obj.key, **self._version(obj), **extra)
            body = r["Body"]
            try:
                head = _head(r)
                if check is not None:
                    check(head)
                # One byte past the cap: an oversize object is detected, never buffered whole.
                return head, body.read(max_bytes + 1)
            except (BotoCoreError, OSError) as e:
                raise StorageUnavailable(f"read {obj.uri}: {type(e).__name__}") from None
            finally:
                body.close()

        result: tuple[Head, bytes] = await self._call(f"read {obj.uri}", get)
        return result

    def presign_get(self, obj: S3Object) -> str:
        params = {"Bucket": obj.bucket, "Key": obj.key, **self._version(obj)}
        return str(
            self.s3.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=self.settings.presign_ttl_s
            )
        )

    async def read(self, obj: S3Object, *, max_bytes: int, byte_range: str | None = None) -> bytes:
        _, data = await self.read_checked(obj, max_bytes=max_bytes, byte_range=byte_range)
        return data

    async def upload_stream(
        self,
        dest: S3Object,
        chunks: AsyncIterator[bytes],
        *,
        describe: Callable[[bytes], tuple[str, dict[str, str]]],
        expect: str | Unknown | None = UNKNOWN,
    ) -> Stored:
        """Stream chunks into `dest`: one PUT if small, multipart otherwise; memory stays at one
        part. `describe(first_bytes)` returns (content type, metadata) once the header is known.
        `expect`: what the writer last saw at `dest` (None: nothing, else its ETag): the write
        is conditional on it (`If-None-Match: *` / `If-Match`, on the PUT or the multipart
        completion), so a writer that was overtaken replaces nothing (`DestinationChanged`).
        An S3 without conditional writes ignores the headers."""
        cond = _condition(expect)
        part_size = max(5 * 1024 * 1024, self.settings.upload_part_bytes)
        buf = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        size = 0
        ctype_meta: tuple[str, dict[str, str]] | None = None

        async def send_part(upload: str, body: bytes) -> None:
            n = len(parts) + 1
            r = await self._call(
                f"upload {dest.uri} part {n}",
                self.s3.upload_part,
                Bucket=dest.bucket,
                Key=dest.key,
                UploadId=upload,
                PartNumber=n,
                Body=body,
            )
            parts.append({"ETag": r["ETag"], "PartNumber": n})

        try:
            async for chunk in chunks:
                buf += chunk
                size += len(chunk)
                if len(buf) >= part_size:
                    if upload_id is None:
                        ctype_meta = describe(bytes(buf[:65536]))
                        r = await self._call(
                            f"upload {dest.uri}",
                            self.s3.create_multipart_upload,
                            Bucket=dest.bucket,
                            Key=dest.key,
                            ContentType=ctype_meta[0],
                            Metadata=ctype_meta[1],
                        )
                        upload_id = r["UploadId"]
                    # The whole buffer goes as one part (part_size .. part_size + one chunk): no
                    # slicing of a large bytearray, and the buffer is released at once.
                    part, buf = bytes(buf), bytearray()
                    await send_part(upload_id, part)
                    del part
            if upload_id is None:
                ctype, meta = describe(bytes(buf[:65536]))
                r = await self._call(
                    f"upload {dest.uri}",
                    self.s3.put_object,
                    Bucket=dest.bucket,
                    Key=dest.key,
                    Body=bytes(buf),
                    ContentType=ctype,
                    Metadata=meta,
                    **cond,
                )
                return Stored(etag=str(r.get("ETag", "")).strip('"'), size=size)
            if buf:
                await send_part(upload_id, bytes(buf))
            r = await self._call(
                f"complete {dest.uri}",
                self.s3.complete_multipart_upload,
                Bucket=dest.bucket,
                Key=dest.key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **cond,
            )
            return Stored(etag=str(r.get("ETag", "")).strip('"'), size=size)
        except BaseException:
            if upload_id is not None:
                # Leave no orphaned parts behind (they cost storage until a lifecycle rule runs).
                with contextlib.suppress(Exception):  # best effort; the original error matters
                    await asyncio.shield(
                        asyncio.to_thread(
                            self.s3.abort_multipart_upload,
                            Bucket=dest.bucket,
                            Key=dest.key,
                            UploadId=upload_id,
                        )
                    )
            raise

    async def put_bytes(
        self, obj: S3Object, data: bytes, *, content_type: str, metadata: dict[str, str]
    ) -> None:
        await self._call(
            f"upload {obj.uri}",
            self.s3.put_object,
            Bucket=obj.bucket,
            Key=obj.key,
            Body=data,
            ContentType=content_type,
            Metadata=metadata,
        )

    async def delete(self, obj: S3Object) -> None:
        await self._call(f"delete {obj.uri}", self.s3.delete_object, Bucket=obj.bucket, Key=obj.key)

    async def head_bucket(self, bucket: str) -> None:
        await self._call(f"bucket {bucket}", self.s3.head_bucket, Bucket=bucket)

    async def reachable(self) -> None:
        """The endpoint answers (a HEAD of a bucket that need not exist: any HTTP answer but
        a network failure counts; 403/404 still prove S3 is there)."""
        try:
            await self.head_bucket("upscale-queue-health-probe")
        except StorageUnavailable:
            raise
        except StorageError:
            return

    async def ensure_bucket(self, bucket: str) -> None:
        try:
            await self._call(f"bucket {bucket}", self.s3.head_bucket, Bucket=bucket)
        except SourceMissing:
            await self._call(f"create bucket {bucket}", self.s3.create_bucket, Bucket=bucket)
