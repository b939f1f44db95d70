"""The model's stand-in: a real 2x upscale with Pillow (so outputs are real images)."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

Image.MAX_IMAGE_PIXELS = 64_000_000


class BadImage(ValueError):
    pass


def upscale_2x(
    data: bytes, detail: int | None = None
) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
    """PNG bytes of the input at twice the size, plus input and output sizes.

    Like the model, `detail` above 50 invents texture: here, film grain (so even a flat input
    makes a realistic, poorly compressible output — what large-result tests need)."""
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
    if detail is not None and detail > 50:
        sigma = (detail - 50) * 2.0
        bands = [Image.effect_noise(out.size, sigma) for _ in range(3)]
        grain = Image.merge("RGB", bands).convert(out.mode)
        out = Image.blend(out, grain, min(0.5, (detail - 50) / 100))
    buf = io.BytesIO()
    out.save(buf, "PNG", compress_level=1)
    return buf.getvalue(), src.size, out.size
