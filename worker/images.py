"""Sniff and validate input images from their bytes (never from the extension)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFile, UnidentifiedImageError

# Formats the upstream takes as they are.
UPSTREAM_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
CONTENT_TYPES = {**UPSTREAM_FORMATS, "GIF": "image/gif", "TIFF": "image/tiff", "BMP": "image/bmp"}
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


def check_supported(info: ImageInfo) -> None:
    if info.format not in UPSTREAM_FORMATS:
        raise ImageRejected(
            f"{info.format} input is not accepted by the upstream (JPEG, PNG or WebP only)"
        )
