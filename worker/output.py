"""Store a paid result in the output format (`UPSCALE_OUTPUT_FORMAT`).

The result's format is sniffed from its first bytes. When it is the wanted format, the result
streams into S3 untouched (no decode; memory stays at one upload part). Otherwise it is spooled
to a temporary file (on disk beyond a few MB), re-encoded with Pillow in a thread with the
source's ICC profile and EXIF, and uploaded from the file. The key's extension, the Content-Type
and the bytes always agree: a destination whose extension names another format is stored under
the extension of the format it holds (`Output.dest`).
"""

from __future__ import annotations

import asyncio
import io
import tempfile
import warnings
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import IO, Any

import structlog
from PIL import Image, UnidentifiedImageError

from worker.contract import S3Object
from worker.formats import choose, key_for, normalise
from worker.images import MAX_PIXELS, ImageInfo, sniff
from worker.storage import AccessDenied, SourceMissing, Storage, StorageRejected, Stored
from worker.upstream.errors import ResultUnavailable

log = structlog.get_logger("worker.output")

SPOOL_BYTES = 4 * 1024 * 1024  # a spooled result moves from memory to disk beyond this
PEEK_BYTES = 64 * 1024  # enough of a result or a source to know its format
READ_CHUNK = 1024 * 1024
# Re-encoding decodes the whole result (3-4 bytes a pixel, plus a converted copy); larger
# results are stored as the upstream made them. One re-encode at a time per process.
REENCODE_MAX_PIXELS = MAX_PIXELS
REENCODE_SLOTS = 1

_ORIENTATION = 0x0112
_EXIF_IFD = 0x8769
_PIXEL_X, _PIXEL_Y = 0xA002, 0xA003
# TIFF structure tags (a TIFF source's EXIF is its IFD0): they describe the source's pixel
# layout and must not travel into another file.
_STRUCTURE_TAGS = {
    254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 284,
    290, 291, 292, 293, 317, 320, 322, 323, 324, 325, 338, 339, 340, 341, 513, 514,
    530, 531, 532, 34675,
}  # fmt: skip
_SUB_IFDS = {0x8769, 0x8825, 0xA005}  # Exif, GPS, Interop
# Modes each format writes as they are (None: any); others are converted.
_MODES: dict[str, tuple[str, ...] | None] = {
    "JPEG": ("RGB", "L", "CMYK"),
    "PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"),
    "WEBP": ("RGB", "RGBA"),
    "AVIF": ("RGB", "RGBA"),
    "BMP": ("1", "L", "P", "RGB", "RGBA"),
    "GIF": ("1", "L", "P", "RGB", "RGBA"),
    "TIFF": None,
}
# Formats that carry an ICC profile and EXIF.
_META_FORMATS = {"JPEG", "PNG", "WEBP", "AVIF", "TIFF"}
# The colour space (ICC header bytes 16-20) each mode's pixels are in.
_SPACES = {
    "RGB": b"RGB ",
    "RGBA": b"RGB ",
    "P": b"RGB ",
    "L": b"GRAY",
    "LA": b"GRAY",
    "1": b"GRAY",
    "I": b"GRAY",
    "I;16": b"GRAY",
    "CMYK": b"CMYK",
}

Describe = Callable[[ImageInfo], tuple[str, dict[str, str]]]


@dataclass(frozen=True)
class SourceMeta:
    """What a re-encode keeps from the source."""

    format: str | None = None
    icc_profile: bytes | None = None
    exif: bytes | None = None
    lossless: bool = False  # a lossless WebP stays lossless


@dataclass(frozen=True)
class Output:
    dest: S3Object  # where it was stored: the asked destination, or its key with the right ext
    stored: Stored
    image: ImageInfo  # what was stored
    note: str = ""  # how it differs from what the upstream returned ("": as returned)


class Undecodable(Exception):
    """Pillow cannot decode the result (or it is too large to): it is stored as it is."""


async def store(
    storage: Storage,
    *,
    dest: S3Object,
    source: S3Object,
    chunks: AsyncIterator[bytes],
    output_format: str,
    source_format: str | None = None,
    quality: int,
    max_source_bytes: int,
    describe: Describe,
) -> Output:
    """Store the result streamed by `chunks` under `dest` (or `dest` with the extension of the
    stored format) in the format `output_format` asks for. `describe(image)` gives the
    Content-Type and metadata of what is stored. `source_format`: the source's format when
    this run read it (else a ranged read finds it)."""
    src = _Source(storage, source, max_source_bytes)
    # Before the download starts: an S3 outage here leaves no half-read stream behind.
    if output_format == "source" and source_format is None:
        source_format = await src.format()
    head, rest = await _peek(chunks)
    got = sniff(head)
    if got is None:
        await _close(rest)
        raise ResultUnavailable("upstream result is not a readable image")
    upstream = normalise(got.format)
    wanted = choose(output_format, upstream=upstream, source=source_format, dest_key=dest.key)
    if wanted == upstream:
        return await _upload(storage, dest, upstream, got, _chain(head, rest), describe)
    if got.width * got.height > REENCODE_MAX_PIXELS:
        note = f"kept as {upstream}: {got.resolution} is too large to re-encode as {wanted}"
        log.warning("result stored as the upstream made it", reason=note)
        return await _upload(storage, dest, upstream, got, _chain(head, rest), describe, note)
    spooled = await _spool(head, rest)
    try:
        meta = await src.meta()
        async with _slot():
            encoded, image, note = await asyncio.to_thread(
                reencode, spooled, wanted, meta, quality=quality
            )
    except Undecodable as e:
        note = f"kept as {upstream}: cannot re-encode it ({e})"
        log.warning("result stored as the upstream made it", reason=note)
        return await _upload(storage, dest, upstream, got, _read(spooled), describe, note)
    finally:
        spooled.close()
    log.info("result re-encoded", note=note)
    try:
        return await _upload(storage, dest, wanted, image, _read(encoded), describe, note)
    finally:
        encoded.close()


async def _upload(
    storage: Storage,
    dest: S3Object,
    fmt: str,
    image: ImageInfo,
    chunks: AsyncIterator[bytes],
    describe: Describe,
    note: str = "",
) -> Output:
    final = S3Object(bucket=dest.bucket, key=key_for(dest.key, fmt))
    stored = await storage.upload_stream(final, chunks, describe=lambda _first: describe(image))
    return Output(dest=final, stored=stored, image=image, note=note)


# -- the source: its format (a ranged read) and, to re-encode, its ICC profile and EXIF -------


class _Source:
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


# -- the re-encode (runs in a thread) -----------------------------------------------------------


def reencode(
    data: IO[bytes], fmt: str, meta: SourceMeta, *, quality: int
) -> tuple[IO[bytes], ImageInfo, str]:
    """Decode `data` and encode it as `fmt` into a spooled file, with the source's ICC profile
    (the result's own wins) and EXIF. Raises `Undecodable` when Pillow cannot decode it."""
    data.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(data)
        except UnidentifiedImageError:
            raise Undecodable("Pillow cannot identify it") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise Undecodable(str(e)) from None
    with img:
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise Undecodable(str(e)) from None
        was = normalise(img.format or "?")
        frame = _convert(img, fmt)
        icc = img.info.get("icc_profile") or meta.icc_profile
        for f in (img, frame):  # only what is passed on below is written
            f.info.pop("icc_profile", None)
            f.info.pop("exif", None)
        notes = [f"{was} re-encoded as {fmt}" + (f" q{quality}" if _lossy(fmt, meta) else "")]
        kept = []
        kwargs: dict[str, Any] = _params(fmt, quality, meta)
        if fmt in _META_FORMATS:
            if icc and _SPACES.get(frame.mode) == icc[16:20]:
                kwargs["icc_profile"] = icc
                kept.append("ICC profile")
            elif icc:
                space = icc[16:20].decode("latin-1").strip()
                notes.append(f"ICC profile dropped ({space} profile, {frame.mode} pixels)")
            exif = _exif_for(meta.exif, frame.size, nested=fmt != "TIFF")
            if exif is not None:
                kwargs["exif"] = exif
                kept.append("EXIF")
        if kept:
            notes.append(" and ".join(kept) + " kept")
        out = _Spool(max_size=SPOOL_BYTES)
        try:
            try:
                frame.save(out, fmt, **kwargs)
            except ValueError as e:
                if "exif" not in kwargs or "exif" not in str(e).lower():
                    raise
                # e.g. JPEG's 64 KB limit: the image matters more than its EXIF
                out.seek(0)
                out.truncate()
                kwargs.pop("exif")
                frame.save(out, fmt, **kwargs)
                notes.append(f"EXIF dropped ({e})")
        except BaseException:
            out.close()
            raise
        return out, ImageInfo(fmt, *frame.size), "; ".join(notes)


def _lossy(fmt: str, meta: SourceMeta) -> bool:
    return fmt in ("JPEG", "AVIF") or (fmt == "WEBP" and not meta.lossless)


def _params(fmt: str, quality: int, meta: SourceMeta) -> dict[str, Any]:
    if fmt == "JPEG":
        return {"quality": quality, **({"subsampling": 0} if quality >= 90 else {})}
    if fmt == "WEBP":
        return {"lossless": True} if meta.lossless else {"quality": quality}
    if fmt == "AVIF":
        return {"quality": quality}
    if fmt == "TIFF":
        return {"compression": "tiff_lzw"}
    return {}


def _convert(img: Image.Image, fmt: str) -> Image.Image:
    modes = _MODES.get(fmt)
    if modes is None or img.mode in modes:
        return img
    alpha = img.has_transparency_data
    if fmt == "JPEG" and alpha:  # no alpha in JPEG: flatten onto white
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", img.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img.convert("RGBA" if alpha else "RGB")


def _exif_for(raw: bytes | None, size: tuple[int, int], *, nested: bool) -> Image.Exif | None:
    """The source's EXIF for the output: orientation 1 (the input was turned upright before the
    call, so the result already is), the output's pixel size, no TIFF structure tags.
    `nested=False` (TIFF, whose writer cannot link sub-IFDs): the main IFD's tags only."""
    if not raw:
        return None
    exif = Image.Exif()
    try:
        exif.load(raw)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError):
        return None
    for tag in (_STRUCTURE_TAGS | (set() if nested else _SUB_IFDS)) & set(exif):
        del exif[tag]
    if exif.get(_ORIENTATION, 1) != 1:
        exif[_ORIENTATION] = 1
    if _EXIF_IFD in exif:
        ifd = exif.get_ifd(_EXIF_IFD)
        if _PIXEL_X in ifd or _PIXEL_Y in ifd:
            ifd[_PIXEL_X], ifd[_PIXEL_Y] = size
    return exif if len(exif) else None


# -- plumbing -----------------------------------------------------------------------------------


class _Spool(tempfile.SpooledTemporaryFile[bytes]):
    """A spooled file Pillow writes into through `write` while it is in memory: asking for a
    `fileno()` (Pillow's fast path) would move even a small image to disk."""

    def fileno(self) -> int:
        if not getattr(self, "_rolled", True):
            raise io.UnsupportedOperation("in memory")
        return super().fileno()


async def _peek(chunks: AsyncIterator[bytes]) -> tuple[bytes, AsyncIterator[bytes]]:
    buf = bytearray()
    it = aiter(chunks)
    while len(buf) < PEEK_BYTES:
        try:
            buf += await anext(it)
        except StopAsyncIteration:
            break
    return bytes(buf), it


async def _chain(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if head:
        yield head
    async for chunk in rest:
        yield chunk


async def _close(it: AsyncIterator[bytes]) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()


async def _spool(head: bytes, rest: AsyncIterator[bytes]) -> _Spool:
    f = _Spool(max_size=SPOOL_BYTES)
    try:
        f.write(head)
        async for chunk in rest:
            await asyncio.to_thread(f.write, chunk)
    except BaseException:
        f.close()
        raise
    return f


async def _read(f: IO[bytes]) -> AsyncIterator[bytes]:
    f.seek(0)
    while chunk := await asyncio.to_thread(f.read, READ_CHUNK):
        yield chunk


_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _slot() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    sem = _slots.get(loop)
    if sem is None:
        sem = _slots[loop] = asyncio.Semaphore(REENCODE_SLOTS)
    return sem
