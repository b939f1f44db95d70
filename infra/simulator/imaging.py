"""The model's stand-in: a real 2x upscale with Pillow (so outputs are real images)."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

Image.MAX_IMAGE_PIXELS = 64_000_000


class BadImage(ValueError):
    pass


def upscale_2x(data: bytes) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
    """PNG bytes of the input at twice the size, plus input and output sizes."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            src = img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB")
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
    ) as e:
        raise BadImage(f"could not decode image: {e}") from None
    out = src.resize((src.width * 2, src.height * 2), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    out.save(buf, "PNG", compress_level=1)
    return buf.getvalue(), src.size, out.size
