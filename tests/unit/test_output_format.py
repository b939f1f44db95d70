"""Output format (`UPSCALE_OUTPUT_FORMAT`), the pure parts: the destination's extension, the
format chosen, the setting, and a re-encode that keeps the source's ICC profile and EXIF. The same
on the real stack is `tests/integration/test_output_format.py`."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from pydantic import ValidationError

from producers.api import build_spec
from tests.support import DATE_ORIGINAL, EXIF_IFD, MAKE, ORIENTATION, SRGB, photo, png
from worker import formats, output
from worker.contract import S3Object, render_destination
from worker.formats import choose, key_for
from worker.images import ImageInfo
from worker.settings import Settings


@pytest.mark.parametrize(
    ("template", "key", "output_format", "expected"),
    [
        ("s3://{bucket}-up/{key_stem}@2x.{ext}", "d/a b.JPG", None, "s3://src-up/d/a b@2x.JPG"),
        ("s3://{bucket}-up/{key_stem}@2x.{ext}", "a.jpg", "source", "s3://src-up/a@2x.jpg"),
        ("s3://{bucket}-up/{key_stem}@2x.{ext}", "a.jpg", "upstream", "s3://src-up/a@2x.jpg"),
        ("s3://{bucket}-up/{key_stem}@2x.{ext}", "noext", "source", "s3://src-up/noext@2x.png"),
        ("s3://{bucket}-up/{key_stem}@2x.{ext}", "a.jpg", "png", "s3://src-up/a@2x.png"),
        ("s3://{bucket}-up/{key_stem}@2x.{ext}", "a.png", "jpeg", "s3://src-up/a@2x.jpg"),
        ("s3://{bucket}-up/{key_stem}@2x.{ext}", "noext", "webp", "s3://src-up/noext@2x.webp"),
        ("s3://{bucket}-up/{key_stem}@2x.{ext}", "a.tiff", "avif", "s3://src-up/a@2x.avif"),
        # a prefix keeps the source key: a fixed format still gets its own extension
        ("s3://out/", "x/y.JPG", "png", "s3://out/x/y.png"),
        ("s3://out/", "x/y.JPG", "source", "s3://out/x/y.JPG"),
        # no extension, or one that names no format: nothing to contradict
        ("s3://out/{key}", "d.ir/file", "png", "s3://out/d.ir/file"),
        ("s3://out/{key_stem}.dat", "a.jpg", "png", "s3://out/a.dat"),
    ],
)
def test_destination_extension(
    template: str, key: str, output_format: str | None, expected: str
) -> None:
    src = S3Object(bucket="src", key=key)
    assert render_destination(template, src, output_format).uri == expected


def test_a_fixed_format_may_not_overwrite_the_source() -> None:
    with pytest.raises(ValueError, match="overwrite the source"):
        render_destination("s3://{bucket}/", S3Object(bucket="src", key="a.jpg"), "jpeg")


@pytest.mark.parametrize(
    ("key", "fmt", "expected"),
    [
        ("a/b@2x.JPG", "JPEG", "a/b@2x.JPG"),
        ("a/b@2x.jpeg", "MPO", "a/b@2x.jpeg"),  # Pillow's name for a camera JPEG
        ("a/b@2x.jpg", "PNG", "a/b@2x.png"),
        ("a/b@2x.png", "WEBP", "a/b@2x.webp"),
        ("a.b/c", "PNG", "a.b/c"),
        ("a/b.dat", "PNG", "a/b.dat"),
    ],
)
def test_key_for(key: str, fmt: str, expected: str) -> None:
    assert key_for(key, fmt) == expected


@pytest.mark.parametrize(
    ("output_format", "upstream", "source", "dest_key", "expected"),
    [
        ("source", "PNG", "JPEG", "a@2x.jpg", "JPEG"),
        ("source", "PNG", "MPO", "a@2x.jpg", "JPEG"),
        ("source", "PNG", "PNG", "a@2x.png", "PNG"),
        ("source", "PNG", "TIFF", "a@2x.tiff", "TIFF"),
        ("source", "PNG", "PSD", "a@2x.psd", "PNG"),  # Pillow cannot write it
        ("source", "PNG", None, "a@2x.jpg", "JPEG"),  # source gone: the key says JPEG
        ("source", "WEBP", None, "a@2x", "WEBP"),  # ... and says nothing: as returned
        ("upstream", "MPO", "PNG", "a@2x.png", "JPEG"),
        ("upstream", "PNG", "JPEG", "a@2x.jpg", "PNG"),
        ("webp", "PNG", "JPEG", "a@2x.webp", "WEBP"),
        ("jpeg", "JPEG", "PNG", "a@2x.jpg", "JPEG"),
    ],
)
def test_choose(
    output_format: str, upstream: str, source: str | None, dest_key: str, expected: str
) -> None:
    assert choose(output_format, upstream=upstream, source=source, dest_key=dest_key) == expected


def test_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert s.jobs.output_format == "source" and s.jobs.output_quality == 92
    assert Settings(output_format=" JPG ").jobs.output_format == "jpeg"
    with pytest.raises(ValidationError, match="'source', 'upstream', 'png'"):
        Settings(output_format="tiff")
    with pytest.raises(ValidationError, match="output_quality"):
        Settings(output_quality=0)
    monkeypatch.setattr(formats, "writable", lambda fmt: fmt != "AVIF")
    with pytest.raises(ValidationError, match=r"cannot write AVIF \(PIL.features.check\('avif'\)"):
        Settings(output_format="avif")


def test_producers_render_the_fixed_extension_into_the_job() -> None:
    source = build_spec("s3://bkt/a.jpg", settings=Settings())
    webp = build_spec("s3://bkt/a.jpg", settings=Settings(output_format="webp"))
    assert source.dest.key == "a@2x.jpg" and webp.dest.key == "a@2x.webp"
    assert source.job_id != webp.job_id


def test_reencode_keeps_icc_and_exif_with_orientation_reset() -> None:
    meta = output.source_meta(photo())
    assert meta.format == "JPEG" and meta.icc_profile == SRGB and meta.exif
    result = io.BytesIO()
    Image.new("RGBA", (96, 128), (10, 200, 30, 255)).save(result, "PNG")
    for fmt in ("JPEG", "WEBP", "PNG", "TIFF"):
        encoded, info, note = output.reencode(result, fmt, meta, quality=80)
        encoded.seek(0)
        img = Image.open(encoded)
        assert (img.format, img.size) == (fmt, (96, 128)) and info == ImageInfo(fmt, 96, 128)
        assert img.info.get("icc_profile") == SRGB, fmt
        exif = img.getexif()
        assert exif[MAKE] == "UQCam" and exif.get(ORIENTATION, 1) == 1, fmt
        if fmt != "TIFF":  # Pillow's TIFF writer keeps the main IFD only
            assert exif.get_ifd(EXIF_IFD)[DATE_ORIGINAL] == "2024:05:06 07:08:09", fmt
        assert "ICC profile and EXIF kept" in note


def test_a_profile_for_other_pixels_is_dropped() -> None:
    cmyk = bytearray(SRGB)
    cmyk[16:20] = b"CMYK"
    result = io.BytesIO(png(8, 8))
    encoded, _, note = output.reencode(
        result, "JPEG", output.SourceMeta("JPEG", bytes(cmyk)), quality=80
    )
    encoded.seek(0)
    assert "icc_profile" not in Image.open(encoded).info
    assert "ICC profile dropped (CMYK profile, RGB pixels)" in note
