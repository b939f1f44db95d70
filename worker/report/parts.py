"""One gzipped object written as it grows: its compressed bytes go to S3 in upload parts, so
memory holds one part whatever the object's size (a single PUT if it stays under one part).

Rows arrive page by page and are routed to one object per state: a push interface, where
`Storage.upload_stream` pulls from one iterator.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import zlib
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from worker.storage import Storage, classify

CONTENT_TYPE = "application/gzip"  # no Content-Encoding: the object is the .gz file itself
MIN_PART = 5 * 1024 * 1024  # S3's smallest upload part (but the last)


class GzipObject:
    def __init__(
        self, storage: Storage, bucket: str, key: str, *, metadata: dict[str, str]
    ) -> None:
        self.s3 = storage.s3
        self.bucket, self.key, self.metadata = bucket, key, metadata
        self.part_bytes = max(MIN_PART, storage.settings.upload_part_bytes)
        self._z = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._buf = bytearray()
        self._upload: str | None = None
        self._parts: list[dict[str, Any]] = []
        self.size = 0

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    async def write(self, data: bytes) -> None:
        self._buf += self._z.compress(data)
        if len(self._buf) >= self.part_bytes:
            await self._send_part()

    async def close(self) -> str:
        """Finish the object; returns the MD5 (hex) of its bytes as stored."""
        self._buf += self._z.flush()
        if self._upload is None:
            body = self._take()
            await self._call(
                self.s3.put_object,
                Bucket=self.bucket,
                Key=self.key,
                Body=body,
                ContentType=CONTENT_TYPE,
                Metadata=self.metadata,
            )
            return self._md5.hexdigest()
        if self._buf:
            await self._send_part()
        await self._call(
            self.s3.complete_multipart_upload,
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self._upload,
            MultipartUpload={"Parts": self._parts},
        )
        return self._md5.hexdigest()

    async def abort(self) -> None:
        """Leave no orphaned parts behind (they cost storage until a lifecycle rule runs)."""
        if self._upload is not None:
            with contextlib.suppress(Exception):  # best effort: the original error matters
                await asyncio.shield(
                    asyncio.to_thread(
                        self.s3.abort_multipart_upload,
                        Bucket=self.bucket,
                        Key=self.key,
                        UploadId=self._upload,
                    )
                )

    def _take(self) -> bytes:
        body, self._buf = bytes(self._buf), bytearray()
        self._md5.update(body)
        self.size += len(body)
        return body

    async def _send_part(self) -> None:
        if self._upload is None:
            r = await self._call(
                self.s3.create_multipart_upload,
                Bucket=self.bucket,
                Key=self.key,
                ContentType=CONTENT_TYPE,
                Metadata=self.metadata,
            )
            self._upload = str(r["UploadId"])
        n = len(self._parts) + 1
        r = await self._call(
            self.s3.upload_part,
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self._upload,
            PartNumber=n,
            Body=self._take(),
        )
        self._parts.append({"ETag": r["ETag"], "PartNumber": n})

    async def _call(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, **kwargs)
        except (ClientError, BotoCoreError) as e:
            raise classify(e, f"report {self.uri}") from None
