"""Sniff and validate input images from their bytes (never from the extension)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Formats the upstream takes as they are.
UPSTREAM_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
CONTENT_TYPES = {
    **UPSTREAM_FORMATS,
    "GIF": "image/gif",
    "TIFF": "image/tiff",
    "BMP": "image/bmp",
    "AVIF": "image/avif",
    "MPO": "image/jpeg",  # a camera JPEG with a multi-picture index
}
# Refuse anything that would decompress past this many pixels (a 2x output of it is 4x larger).
MAX_PIXELS = 64_000_000


class ImageRejected(ValueError):
    """The input can never be upscaled as it is: the message says why, for a human."""


@dataclass(frozen=True)
class ImageInfo:
    format: str  # Pillow's name: JPEG, PNG, WEBP, ...
    width: int
    height: int

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES.get(self.format, "application/octet-stream")

    @property
    def resolution(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def extension(self) -> str:
        return {"JPEG": "jpg"}.get(self.format, self.format.lower())


def sniff(prefix: bytes) -> ImageInfo | None:
    """Format and size from the first bytes of a file (header only); None if not enough data."""
    parser = ImageFile.Parser()
    try:
        parser.feed(prefix)
    except (OSError, SyntaxError, ValueError):
        return None
    img = parser.image
    if img is None or not img.format:
        return None
    return ImageInfo(format=img.format, width=img.size[0], height=img.size[1])


def validate(data: bytes, *, max_bytes: int) -> ImageInfo:
    """Fully check an input image: non-empty, within the size cap, decodable, not a bomb."""
    if not data:
        raise ImageRejected("source object is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageRejected(
            f"source is {len(data):,} bytes, over the upstream's {max_bytes:,}-byte limit"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                info = ImageInfo(format=img.format or "?", width=img.size[0], height=img.size[1])
                check_dimensions(info)
                img.load()  # decodes every pixel: catches truncated and corrupt data
    except ImageRejected:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageRejected(f"image rejected as a decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise ImageRejected("source is not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageRejected(f"image is corrupt or truncated: {e}") from None
    return info


def check_dimensions(info: ImageInfo) -> None:
    if info.width <= 0 or info.height <= 0:
        raise ImageRejected(f"image has no pixels ({info.resolution})")
    if info.width * info.height > MAX_PIXELS:
        raise ImageRejected(
            f"image is {info.resolution} ({info.width * info.height:,} pixels), over the "
            f"{MAX_PIXELS:,}-pixel safety limit"
        )


@dataclass(frozen=True)
class Prepared:
    """What goes to the upstream: the original bytes, or a converted/re-encoded copy."""

    data: bytes
    info: ImageInfo
    note: str = ""  # why the bytes differ from the source ("" when they are the original)

    @property
    def changed(self) -> bool:
        return bool(self.note)


def prepare(
    data: bytes, info: ImageInfo, *, max_bytes: int, convert: bool, reencode: bool
) -> Prepared:
    """Make a validated image acceptable to the upstream.

    JPEG/PNG/WebP go as they are, unless an EXIF orientation must be applied or they exceed
    `max_bytes`. Other formats (TIFF, BMP, GIF's first frame, ...) become PNG when `convert`.
    Oversized images are re-encoded when `reencode`: lossless (PNG, then lossless WebP) first,
    then high-quality JPEG steps; when nothing fits the job fails with the reason.
    """
    notes: list[str] = []
    with Image.open(io.BytesIO(data)) as img:
        orientation = img.getexif().get(0x0112, 1)
        needs_convert = info.format not in UPSTREAM_FORMATS
        if needs_convert and not convert:
            check_supported(info)
        if not needs_convert and orientation in (0, 1) and len(data) <= max_bytes:
            return Prepared(data, info)
        img.seek(0)
        frame = ImageOps.exif_transpose(img) or img
        if orientation not in (0, 1):
            notes.append(f"EXIF orientation {orientation} applied")
        out_format = info.format if not needs_convert else "PNG"
        if needs_convert:
            notes.append(f"{info.format} converted to PNG")
        frame = _normalise_mode(frame, out_format)
        encoded = _encode(frame, out_format, lossless=True)
        if len(encoded) > max_bytes:
            if not reencode:
                raise ImageRejected(
                    f"image is {len(data):,} bytes, over the upstream's {max_bytes:,}-byte limit "
                    "(re-encoding to fit is switched off: UPSCALE_REENCODE_OVERSIZE=false)"
                )
            encoded, out_format, how = _fit(frame, max_bytes, len(data))
            notes.append(how)
    w, h = frame.size
    return Prepared(encoded, ImageInfo(out_format, w, h), "; ".join(notes))


def _normalise_mode(img: Image.Image, fmt: str) -> Image.Image:
    if fmt == "JPEG" and img.mode not in ("RGB", "L", "CMYK"):
        return img.convert("RGB")
    if fmt in ("PNG", "WEBP") and img.mode not in ("RGB", "RGBA", "L", "LA", "P", "I", "I;16"):
        return img.convert("RGBA" if "A" in img.getbands() else "RGB")
    return img


def _encode(img: Image.Image, fmt: str, *, lossless: bool, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    elif fmt == "WEBP":
        img.save(buf, "WEBP", lossless=lossless, quality=quality if not lossless else 100)
    else:
        img.save(buf, "PNG", optimize=lossless)
    return buf.getvalue()


def _fit(img: Image.Image, max_bytes: int, original: int) -> tuple[bytes, str, str]:
    for fmt in ("PNG", "WEBP"):
        data = _encode(_normalise_mode(img, fmt), fmt, lossless=True)
        if len(data) <= max_bytes:
            return (
                data,
                fmt,
                f"re-encoded losslessly as {fmt} ({original:,} -> {len(data):,} bytes)",
            )
    rgb = img.convert("RGB")
    for quality in (95, 92, 90, 85):
        data = _encode(rgb, "JPEG", lossless=False, quality=quality)
        if len(data) <= max_bytes:
            return (
                data,
                "JPEG",
                f"re-encoded as JPEG q{quality} ({original:,} -> {len(data):,} bytes)",
            )
    raise ImageRejected(
        f"image is {original:,} bytes and does not fit the upstream's {max_bytes:,}-byte limit "
        "even as JPEG q85: downscale it first"
    )


def check_supported(info: ImageInfo) -> None:
    if info.format not in UPSTREAM_FORMATS:
        raise ImageRejected(
            f"{info.format} input is not accepted by the upstream (JPEG, PNG or WebP only)"
        )
