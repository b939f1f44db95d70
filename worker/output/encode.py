"""The re-encode (runs in a thread): decode a result with Pillow and encode it in another
format, with the source's ICC profile (the result's own wins) and EXIF, into a spooled file;
one re-encode at a time per process (`slot`)."""

from __future__ import annotations

import asyncio
import warnings
import weakref
from typing import IO, Any

from PIL import Image, UnidentifiedImageError

from worker.formats import normalise
from worker.images import ImageInfo
from worker.output.source import SourceMeta
from worker.output.stream import SPOOL_BYTES, Spool

REENCODE_SLOTS = 1  # re-encodes at a time per process (each decodes a whole result)

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


class Undecodable(Exception):
    """Pillow cannot decode the result (or it is too large to): it is stored as it is."""


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
        out = Spool(max_size=SPOOL_BYTES)
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


_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def slot() -> asyncio.Semaphore:
    """This event loop's re-encode slots (`REENCODE_SLOTS`)."""
    loop = asyncio.get_running_loop()
    sem = _slots.get(loop)
    if sem is None:
        sem = _slots[loop] = asyncio.Semaphore(REENCODE_SLOTS)
    return sem
