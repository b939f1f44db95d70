"""Output format (`UPSCALE_OUTPUT_FORMAT`): the stored bytes, the key's extension and the
Content-Type agree, and a re-encode keeps the source's ICC profile and EXIF."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image, ImageCms
from pydantic import ValidationError

from infra.stack import LocalStack
from producers.api import Producer, build_spec
from tests.conftest import Buckets, Sim, drain, png, put, wait_state
from worker import formats, output
from worker.contract import Keys, S3Object, render_destination
from worker.formats import choose, key_for
from worker.images import ImageInfo
from worker.settings import Settings
from worker.storage import Storage

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
MAKE, ORIENTATION, EXIF_IFD, DATE_ORIGINAL = 0x010F, 0x0112, 0x8769, 0x9003
AVIF = pytest.mark.skipif(not formats.writable("AVIF"), reason="this Pillow cannot write AVIF")
CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "AVIF": "image/avif",
}


# -- pure parts -------------------------------------------------------------------------------


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
    assert s.output_format == "source" and s.output_quality == 92
    assert Settings(output_format=" JPG ").output_format == "jpeg"  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="'source', 'upstream', 'png'"):
        Settings(output_format="tiff")  # type: ignore[arg-type]
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
    meta = output.source_meta(_photo())
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


# -- on the real stack ------------------------------------------------------------------------


def _photo(w: int = 64, h: int = 48, fmt: str = "JPEG", orientation: int = 6) -> bytes:
    """A camera-like source: EXIF (make, date, orientation) and an sRGB ICC profile."""
    exif = Image.Exif()
    exif[MAKE] = "UQCam"
    exif[ORIENTATION] = orientation
    exif.get_ifd(EXIF_IFD)[DATE_ORIGINAL] = "2024:05:06 07:08:09"
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (180, 90, 40)).save(buf, fmt, exif=exif, icc_profile=SRGB)
    return buf.getvalue()


def _get(stack: LocalStack, bucket: str, key: str) -> tuple[Image.Image, str, bytes]:
    obj = stack.s3_client().get_object(Bucket=bucket, Key=key)
    data = obj["Body"].read()
    return Image.open(io.BytesIO(data)), obj["ContentType"], data


def _keys(stack: LocalStack, bucket: str) -> list[str]:
    listed = stack.s3_client().list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in listed.get("Contents", []))


async def _note(producer: Producer, job_id: str) -> str:
    raw = await producer.redis.hget(Keys.job(job_id), "output_note")  # type: ignore[misc]
    return raw.decode() if raw else ""


async def test_default_keeps_a_jpeg_source_a_jpeg_with_its_exif_and_icc(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    put(stack, buckets.src, "dir/photo.jpg", _photo())
    job_id = (await producer.enqueue(f"s3://{buckets.src}/dir/photo.jpg")).job_id
    await drain(settings)
    rec = await wait_state(producer, job_id, "succeeded", "failed")
    assert rec.state == "succeeded", rec.error
    assert rec.dest == f"s3://{buckets.dest}/dir/photo@2x.jpg"
    assert rec.output_content_type == "image/jpeg" and rec.output_resolution == "96x128"
    assert _keys(stack, buckets.dest) == ["dir/photo@2x.jpg"]
    img, ctype, data = _get(stack, buckets.dest, "dir/photo@2x.jpg")
    assert data[:3] == b"\xff\xd8\xff" and img.format == "JPEG" and ctype == "image/jpeg"
    assert img.size == (96, 128)  # the input was turned upright (EXIF orientation 6) ...
    exif = img.getexif()
    assert exif.get(ORIENTATION, 1) == 1  # ... so the output must not be turned again
    assert exif[MAKE] == "UQCam"
    assert exif.get_ifd(EXIF_IFD)[DATE_ORIGINAL] == "2024:05:06 07:08:09"
    assert img.info["icc_profile"] == SRGB
    assert "PNG re-encoded as JPEG q92" in await _note(producer, job_id)
    meta = stack.s3_client().head_object(Bucket=buckets.dest, Key="dir/photo@2x.jpg")["Metadata"]
    assert meta["upscale-job-id"] == job_id and meta["upscale-resolution"] == "96x128"
    assert sim.stats()["billed_calls"] == 1


@pytest.mark.parametrize(
    ("output_format", "fmt", "ext"),
    [
        ("png", "PNG", "png"),
        ("jpeg", "JPEG", "jpg"),
        ("webp", "WEBP", "webp"),
        pytest.param("avif", "AVIF", "avif", marks=AVIF),
    ],
)
async def test_a_fixed_format(
    stack: LocalStack,
    sim: Sim,
    settings: Settings,
    producer: Producer,
    buckets: Buckets,
    output_format: str,
    fmt: str,
    ext: str,
) -> None:
    s = settings.model_copy(update={"output_format": output_format})
    put(stack, buckets.src, "photo.jpg", _photo(orientation=1))
    job_id = (await Producer(producer.redis, s).enqueue(f"s3://{buckets.src}/photo.jpg")).job_id
    await drain(s)
    rec = await wait_state(producer, job_id, "succeeded", "failed")
    assert rec.state == "succeeded", rec.error
    key = f"photo@2x.{ext}"
    assert rec.dest == f"s3://{buckets.dest}/{key}" and _keys(stack, buckets.dest) == [key]
    img, ctype, _ = _get(stack, buckets.dest, key)
    assert img.format == fmt and img.size == (128, 96)
    assert ctype == rec.output_content_type == CONTENT_TYPES[fmt]
    if fmt == "PNG":  # the upstream (the simulator) returns PNG: stored as it came
        assert await _note(producer, job_id) == ""
    else:
        assert img.info["icc_profile"] == SRGB and img.getexif()[MAKE] == "UQCam"


async def test_upstream_format_goes_under_its_own_extension(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    s = settings.model_copy(update={"output_format": "upstream"})
    put(stack, buckets.src, "photo.jpg", _photo())
    r = await Producer(producer.redis, s).enqueue(f"s3://{buckets.src}/photo.jpg")
    assert (await producer.status(r.job_id)).dest.endswith("/photo@2x.jpg")  # type: ignore[union-attr]
    await drain(s)
    rec = await wait_state(producer, r.job_id, "succeeded", "failed")
    assert rec.state == "succeeded", rec.error
    assert rec.dest == f"s3://{buckets.dest}/photo@2x.png"
    assert _keys(stack, buckets.dest) == ["photo@2x.png"]  # nothing under .jpg
    img, ctype, data = _get(stack, buckets.dest, "photo@2x.png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and img.format == "PNG" and ctype == "image/png"
    assert rec.output_content_type == "image/png"


async def test_a_png_source_stays_a_png_stream(
    stack: LocalStack,
    sim: Sim,
    settings: Settings,
    producer: Producer,
    buckets: Buckets,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_reencode(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("a PNG result for a PNG source must stream, not be re-encoded")

    monkeypatch.setattr(output, "reencode", no_reencode)
    put(stack, buckets.src, "a.png", png(50, 40))
    job_id = (await producer.enqueue(f"s3://{buckets.src}/a.png")).job_id
    await drain(settings)
    rec = await wait_state(producer, job_id, "succeeded", "failed")
    assert rec.state == "succeeded", rec.error
    assert rec.dest == f"s3://{buckets.dest}/a@2x.png"
    img, ctype, _ = _get(stack, buckets.dest, "a@2x.png")
    assert img.format == "PNG" and ctype == "image/png" and img.size == (100, 80)
    assert await _note(producer, job_id) == ""


async def test_a_source_key_without_extension_gets_its_formats(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    # `{ext}` of a key without one renders `png`; the source is a JPEG: stored as `.jpg`
    put(stack, buckets.src, "scans/IMG_0001", _photo(orientation=1))
    job_id = (await producer.enqueue(f"s3://{buckets.src}/scans/IMG_0001")).job_id
    assert (await producer.status(job_id)).dest.endswith("IMG_0001@2x.png")  # type: ignore[union-attr]
    await drain(settings)
    rec = await wait_state(producer, job_id, "succeeded", "failed")
    assert rec.state == "succeeded", rec.error
    assert rec.dest == f"s3://{buckets.dest}/scans/IMG_0001@2x.jpg"
    assert _keys(stack, buckets.dest) == ["scans/IMG_0001@2x.jpg"]
    img, ctype, _ = _get(stack, buckets.dest, "scans/IMG_0001@2x.jpg")
    assert img.format == "JPEG" and ctype == "image/jpeg"


# -- the store step's fallbacks, against real S3 ----------------------------------------------


async def _chunks(data: bytes, size: int = 7000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _describe(img: ImageInfo) -> tuple[str, dict[str, str]]:
    return img.content_type, {"upscale-resolution": img.resolution}


async def test_store_fallbacks(
    stack: LocalStack, settings: Settings, buckets: Buckets, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = Storage(settings)
    result = png(120, 90)
    common: dict[str, Any] = {"quality": 90, "max_source_bytes": 10**7, "describe": _describe}

    # the source is gone by store time (a resumed run): the destination's extension decides
    gone = S3Object(bucket=buckets.src, key="deleted.jpg")
    out = await output.store(
        storage,
        dest=S3Object(bucket=buckets.dest, key="deleted@2x.jpg"),
        source=gone,
        chunks=_chunks(result),
        output_format="source",
        **common,
    )
    img, ctype, _ = _get(stack, buckets.dest, "deleted@2x.jpg")
    assert out.dest.key == "deleted@2x.jpg" and img.format == "JPEG" and ctype == "image/jpeg"
    assert "kept" not in out.note  # no source: no ICC profile or EXIF to keep

    # too large to re-encode: stored as it came, under its own extension
    put(stack, buckets.src, "big.jpg", _photo(orientation=1))
    monkeypatch.setattr(output, "REENCODE_MAX_PIXELS", 100 * 80)
    out = await output.store(
        storage,
        dest=S3Object(bucket=buckets.dest, key="big@2x.jpg"),
        source=S3Object(bucket=buckets.src, key="big.jpg"),
        chunks=_chunks(result),
        output_format="source",
        **common,
    )
    assert out.dest.key == "big@2x.png" and "too large to re-encode" in out.note
    img, ctype, data = _get(stack, buckets.dest, "big@2x.png")
    assert data == result and ctype == "image/png"

    # Pillow cannot decode it (a damaged PNG whose header still reads): stored as it came
    damaged = bytearray(png(120, 90, color=(1, 2, 3)))
    idat = damaged.index(b"IDAT")
    damaged[idat + 4 : idat + 12] = b"\xff" * 8
    monkeypatch.setattr(output, "REENCODE_MAX_PIXELS", 10**8)
    out = await output.store(
        storage,
        dest=S3Object(bucket=buckets.dest, key="damaged@2x.jpg"),
        source=gone,
        chunks=_chunks(bytes(damaged)),
        output_format="jpeg",
        **common,
    )
    assert out.dest.key == "damaged@2x.png" and "cannot re-encode it" in out.note
    assert _get(stack, buckets.dest, "damaged@2x.png")[2] == bytes(damaged)

    # not an image at all: a new call is the only way
    with pytest.raises(output.ResultUnavailable):
        await output.store(
            storage,
            dest=S3Object(bucket=buckets.dest, key="x@2x.jpg"),
            source=gone,
            chunks=_chunks(b"<html>not an image</html>"),
            output_format="source",
            **common,
        )
