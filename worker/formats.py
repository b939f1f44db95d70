"""Output formats: the setting's values, extensions, and which format a result is stored in.

Pure functions, no I/O: producers use them at enqueue (the destination's extension), workers at
store time (the format to write, and the key that matches it).
"""

from __future__ import annotations

import posixpath
import warnings
from functools import cache
from typing import Literal, get_args

# `source`: the source's own format; `upstream`: the upstream's bytes as they are; else fixed.
OutputFormat = Literal["source", "upstream", "png", "jpeg", "webp", "avif"]
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)
FIXED = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}  # setting -> Pillow name

# The formats we store, as Pillow names them, with the extension a key gets for each.
EXTENSIONS = {
    "JPEG": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "AVIF": "avif",
    "TIFF": "tiff",
    "BMP": "bmp",
    "GIF": "gif",
}
_BY_EXTENSION = {
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "jpe": "JPEG",
    "jfif": "JPEG",
    "png": "PNG",
    "webp": "WEBP",
    "avif": "AVIF",
    "tif": "TIFF",
    "tiff": "TIFF",
    "bmp": "BMP",
    "gif": "GIF",
}
# Pillow names a camera JPEG with a multi-picture index MPO: the file is a JPEG.
_ALIASES = {"MPO": "JPEG"}
# What Pillow needs to write a format (`PIL.features`); formats not listed need nothing extra.
_FEATURES = {"JPEG": "jpg", "PNG": "zlib", "WEBP": "webp", "AVIF": "avif"}


def normalise(fmt: str) -> str:
    fmt = fmt.upper()
    return _ALIASES.get(fmt, fmt)


def extension_for(fmt: str) -> str:
    fmt = normalise(fmt)
    return EXTENSIONS.get(fmt, fmt.lower())


@cache  # what the installed Pillow can write does not change while a process runs
def writable(fmt: str) -> bool:
    """Pillow, as installed here, can write `fmt` (AVIF and WebP depend on how it was built)."""
    from PIL import Image, features

    fmt = normalise(fmt)
    Image.init()
    if fmt not in Image.SAVE:
        return False
    name = _FEATURES.get(fmt)
    if name is None:
        return True
    with warnings.catch_warnings():  # an older Pillow warns about a feature it does not know
        warnings.simplefilter("ignore")
        return bool(features.check(name))


def check_setting(value: str) -> str:
    """Validate `UPSCALE_OUTPUT_FORMAT` beyond its allowed values: a fixed format must be one
    this Pillow can write."""
    fmt = FIXED.get(value)
    if fmt is not None and not writable(fmt):
        raise ValueError(
            f"this Pillow cannot write {fmt} (PIL.features.check({_FEATURES[fmt]!r}) is false): "
            "install a Pillow built with it (AVIF: Pillow >= 11.2 wheels) or choose "
            + ", ".join(v for v in OUTPUT_FORMATS if v != value)
        )
    return value


def format_of_key(key: str) -> str | None:
    """The image format a key's extension names (case-insensitive), or None (no extension, or
    one that names no format we know)."""
    _, ext = posixpath.splitext(posixpath.basename(key))
    return _BY_EXTENSION.get(ext[1:].lower()) if ext else None


def key_for(key: str, fmt: str) -> str:
    """`key` with its extension made to match `fmt`: unchanged when the extension already names
    `fmt`, or names no image format at all (nothing to contradict); replaced when it names
    another format."""
    named = format_of_key(key)
    fmt = normalise(fmt)
    if named is None or named == fmt:
        return key
    return f"{posixpath.splitext(key)[0]}.{extension_for(fmt)}"


def template_ext(output_format: str | None) -> str | None:
    """What `{ext}` renders as for this setting: a fixed format's extension; None = the source
    key's own (the format is then only known at store time)."""
    fmt = FIXED.get(output_format or "")
    return EXTENSIONS[fmt] if fmt else None


def choose(output_format: str, *, upstream: str, source: str | None, dest_key: str) -> str:
    """The format to store a result in (a Pillow name).

    - fixed: that format;
    - `upstream`: the upstream's own (never re-encoded);
    - `source`: the source's format (sniffed from its bytes). Formats Pillow cannot write become
      PNG. `source=None` (the source can no longer be read): the format the destination key
      names, else the upstream's.
    """
    if output_format in FIXED:
        return FIXED[output_format]
    upstream = normalise(upstream)
    if output_format == "upstream":
        return upstream
    wanted = normalise(source) if source else (format_of_key(dest_key) or upstream)
    return wanted if wanted in EXTENSIONS and writable(wanted) else "PNG"
