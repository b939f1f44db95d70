"""Output format (`UPSCALE_OUTPUT_FORMAT`) on the real stack: the stored bytes, the key's extension
and the Content-Type agree, and a re-encode keeps the source's ICC profile and EXIF. The pure rules
(destination extension, `key_for`, `choose`, settings, re-encode) are
`tests/unit/test_output_format.py`."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image

from infra.stack import LocalStack
from producers.api import Producer
from tests.integration.conftest import Buckets, Sim, drain, put, wait_state
from tests.support import (
    DATE_ORIGINAL,
    EXIF_IFD,
    MAKE,
    ORIENTATION,
    SRGB,
    photo,
    png,
    stored_output,
)
from worker import formats, output
from worker.contract import Keys, S3Object
from worker.images import ImageInfo
from worker.settings import Settings
from worker.storage import Storage
from worker.upstream.errors import ResultUnavailable

AVIF = pytest.mark.skipif(not formats.writable("AVIF"), reason="this Pillow cannot write AVIF")
CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "AVIF": "image/avif",
}


# -- on the real stack ------------------------------------------------------------------------


def _get(stack: LocalStack, bucket: str, key: str) -> tuple[Image.Image, str, bytes]:
    obj = stack.s3_client().get_object(Bucket=bucket, Key=key)
    data = obj["Body"].read()
    return Image.open(io.BytesIO(data)), obj["ContentType"], data


def _keys(stack: LocalStack, bucket: str) -> list[str]:
    listed = stack.s3_client().list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in listed.get("Contents", []))


async def _note(producer: Producer, job_id: str) -> str:
    raw = await producer.redis.hget(Keys.job(job_id), "output_note")  # type: ignore[misc]  # redis-py's async stubs
    return raw.decode() if raw else ""


async def test_default_keeps_a_jpeg_source_a_jpeg_with_its_exif_and_icc(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    put(stack, buckets.src, "dir/photo.jpg", photo())
    job_id = (await producer.enqueue(f"s3://{buckets.src}/dir/photo.jpg")).job_id
    await drain(settings)
    rec = await wait_state(producer, job_id, "succeeded", "failed")
    assert rec.state == "succeeded", rec.error
    assert rec.dest == f"s3://{buckets.dest}/dir/photo@2x.jpg"
    out = stored_output(stack.s3_client(), rec.dest)
    assert out.content_type == "image/jpeg" and out.resolution == "96x128"
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
    put(stack, buckets.src, "photo.jpg", photo(orientation=1))
    job_id = (await Producer(producer.redis, s).enqueue(f"s3://{buckets.src}/photo.jpg")).job_id
    await drain(s)
    rec = await wait_state(producer, job_id, "succeeded", "failed")
    assert rec.state == "succeeded", rec.error
    key = f"photo@2x.{ext}"
    assert rec.dest == f"s3://{buckets.dest}/{key}" and _keys(stack, buckets.dest) == [key]
    img, ctype, _ = _get(stack, buckets.dest, key)
    assert img.format == fmt and img.size == (128, 96)
    assert ctype == stored_output(stack.s3_client(), rec.dest).content_type == CONTENT_TYPES[fmt]
    if fmt == "PNG":  # the upstream (the simulator) returns PNG: stored as it came
        assert await _note(producer, job_id) == ""
    else:
        assert img.info["icc_profile"] == SRGB and img.getexif()[MAKE] == "UQCam"


async def test_upstream_format_goes_under_its_own_extension(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    s = settings.model_copy(update={"output_format": "upstream"})
    put(stack, buckets.src, "photo.jpg", photo())
    r = await Producer(producer.redis, s).enqueue(f"s3://{buckets.src}/photo.jpg")
    assert (await producer.status(r.job_id)).dest.endswith("/photo@2x.jpg")  # type: ignore[union-attr]  # the job exists
    await drain(s)
    rec = await wait_state(producer, r.job_id, "succeeded", "failed")
    assert rec.state == "succeeded", rec.error
    assert rec.dest == f"s3://{buckets.dest}/photo@2x.png"
    assert _keys(stack, buckets.dest) == ["photo@2x.png"]  # nothing under .jpg
    img, ctype, data = _get(stack, buckets.dest, "photo@2x.png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and img.format == "PNG" and ctype == "image/png"
    assert stored_output(stack.s3_client(), rec.dest).content_type == "image/png"


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
    put(stack, buckets.src, "scans/IMG_0001", photo(orientation=1))
    job_id = (await producer.enqueue(f"s3://{buckets.src}/scans/IMG_0001")).job_id
    assert (await producer.status(job_id)).dest.endswith("IMG_0001@2x.png")  # type: ignore[union-attr]  # the job exists
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
    storage = Storage(settings.s3)
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
    put(stack, buckets.src, "big.jpg", photo(orientation=1))
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
    with pytest.raises(ResultUnavailable):
        await output.store(
            storage,
            dest=S3Object(bucket=buckets.dest, key="x@2x.jpg"),
            source=gone,
            chunks=_chunks(b"<html>not an image</html>"),
            output_format="source",
            **common,
        )
