"""The source object as a re-encode needs it, read at store time: its format (a ranged read
of its first bytes) and its ICC profile and EXIF (from its headers, no pixel decode)."""

from __future__ import annotations

import asyncio
import io
import warnings
from dataclasses import dataclass

import structlog
from PIL import Image

from worker.contract import S3Object
from worker.images import sniff
from worker.output.stream import PEEK_BYTES
from worker.storage import AccessDenied, SourceMissing, Storage, StorageRejected

log = structlog.get_logger("worker.output")  # the logger of the whole output step


@dataclass(frozen=True)
class SourceMeta:
    """What a re-encode keeps from the source."""

    format: str | None = None
    icc_profile: bytes | None = None
    exif: bytes | None = None
    lossless: bool = False  # a lossless WebP stays lossless


class SourceReader:
    """The source object, read at store time: a resumed run (the paid result was saved by an
    earlier run) has not read it. A source that is gone now does not fail a paid job."""

    def __init__(self, storage: Storage, obj: S3Object, max_bytes: int) -> None:
        self.storage, self.obj, self.max_bytes = storage, obj, max_bytes
        self.data: bytes | None = None
        self.whole = False
        self.gone = False

    async def _get(self, *, whole: bool) -> bytes | None:
        if self.gone or (self.data is not None and (self.whole or not whole)):
            return self.data
        try:
            if whole:
                data = await self.storage.read(self.obj, max_bytes=self.max_bytes)
            else:
                data = await self.storage.read(
                    self.obj, max_bytes=PEEK_BYTES, byte_range=f"bytes=0-{PEEK_BYTES - 1}"
                )
        except (SourceMissing, AccessDenied, StorageRejected) as e:
            log.warning(
                "source unreadable at store time: its format and metadata are unknown", error=str(e)
            )
            self.gone = True
            return None
        self.data, self.whole = data, whole or len(data) < PEEK_BYTES
        return data

    async def format(self) -> str | None:
        data = await self._get(whole=False)
        info = sniff(data) if data else None
        return info.format if info else None

    async def meta(self) -> SourceMeta:
        data = await self._get(whole=True)
        self.data = None  # not needed again: do not hold it during the re-encode
        return await asyncio.to_thread(source_meta, data) if data else SourceMeta()


def source_meta(data: bytes) -> SourceMeta:
    """Format, ICC profile and EXIF of a source image, from its headers (no pixel decode)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format
                icc = img.info.get("icc_profile") or None
                if fmt == "PNG" and "exif" not in img.info:
                    exif = _png_exif(data)  # an eXIf chunk after the pixels: no decode for it
                else:
                    found = img.getexif()
                    exif = found.tobytes() if len(found) else None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        log.warning("could not read the source's metadata", error=str(e))
        return SourceMeta()
    return SourceMeta(
        format=fmt, icc_profile=icc, exif=exif, lossless=fmt == "WEBP" and _webp_lossless(data)
    )


def _png_exif(data: bytes) -> bytes | None:
    pos = 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind == b"eXIf":
            return data[pos + 8 : pos + 8 + length] or None
        if kind == b"IEND":
            break
        pos += 12 + length
    return None


def _webp_lossless(data: bytes) -> bool:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return False
    pos = 12
    while pos + 8 <= len(data):
        kind = data[pos : pos + 4]
        if kind in (b"VP8L", b"VP8 "):
            return kind == b"VP8L"
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        pos += 8 + size + (size & 1)
    return False
