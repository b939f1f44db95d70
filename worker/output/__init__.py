"""Store a paid result in the output format (`UPSCALE_OUTPUT_FORMAT`).

The result's format is sniffed from its first bytes. When it is the wanted format, the result
streams into S3 untouched (no decode; memory stays at one upload part). Otherwise it is spooled
to a temporary file (on disk beyond a few MB), re-encoded with Pillow in a thread with the
source's ICC profile and EXIF, and uploaded from the file. The key's extension, the Content-Type
and the bytes always agree: a destination whose extension names another format is stored under
the extension of the format it holds (`Output.dest`).

- `stream`: the result as a stream (peek at its first bytes, spool it, read it back);
- `source`: the source at store time (its format; its ICC profile and EXIF);
- `encode`: the re-encode with Pillow (in a thread, one at a time per process);
- `worker.formats`: the pure rules (which format, which extension).

`store` is here, deciding between them, and reads `reencode` and `REENCODE_MAX_PIXELS` from
this module (tests replace them here).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import structlog

from worker.contract import S3Object
from worker.formats import choose, key_for, normalise
from worker.images import MAX_PIXELS, ImageInfo, sniff
from worker.output.encode import REENCODE_SLOTS, Undecodable, reencode, slot
from worker.output.source import SourceMeta, SourceReader, source_meta
from worker.output.stream import (
    PEEK_BYTES,
    READ_CHUNK,
    SPOOL_BYTES,
    chain,
    close,
    peek,
    read,
    spool,
)
from worker.storage import UNKNOWN, Storage, Stored
from worker.upstream.errors import ResultUnavailable

__all__ = [
    "PEEK_BYTES",
    "READ_CHUNK",
    "REENCODE_MAX_PIXELS",
    "REENCODE_SLOTS",
    "SPOOL_BYTES",
    "Describe",
    "Output",
    "SourceMeta",
    "Undecodable",
    "reencode",
    "source_meta",
    "store",
]

log = structlog.get_logger("worker.output")

# Re-encoding decodes the whole result (3-4 bytes a pixel, plus a converted copy); larger
# results are stored as the upstream made them.
REENCODE_MAX_PIXELS = MAX_PIXELS

Describe = Callable[[ImageInfo], tuple[str, dict[str, str]]]


@dataclass(frozen=True)
class Output:
    dest: S3Object  # where it was stored: the asked destination, or its key with the right ext
    stored: Stored
    image: ImageInfo  # what was stored
    note: str = ""  # how it differs from what the upstream returned ("": as returned)


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
    seen: Mapping[str, str | None] | None = None,
) -> Output:
    """Store the result streamed by `chunks` under `dest` (or `dest` with the extension of the
    stored format) in the format `output_format` asks for. `describe(image)` gives the
    Content-Type and metadata of what is stored. `source_format`: the source's format when
    this run read it (else a ranged read finds it). `seen`: what the run saw at each key it may
    store under (None: nothing there, else the ETag): the write is conditional on it
    (`Storage.upload_stream`'s `expect`); a key it did not look at is written unconditionally."""
    src = SourceReader(storage, source, max_source_bytes)
    # Before the download starts: an S3 outage here leaves no half-read stream behind.
    if output_format == "source" and source_format is None:
        source_format = await src.format()
    head, rest = await peek(chunks)
    got = sniff(head)
    if got is None:
        await close(rest)
        raise ResultUnavailable("upstream result is not a readable image")
    upstream = normalise(got.format)
    wanted = choose(output_format, upstream=upstream, source=source_format, dest_key=dest.key)
    if wanted == upstream:
        return await _upload(storage, dest, upstream, got, chain(head, rest), describe, seen=seen)
    if got.width * got.height > REENCODE_MAX_PIXELS:
        note = f"kept as {upstream}: {got.resolution} is too large to re-encode as {wanted}"
        log.warning("result stored as the upstream made it", reason=note)
        return await _upload(
            storage, dest, upstream, got, chain(head, rest), describe, note, seen=seen
        )
    spooled = await spool(head, rest)
    try:
        meta = await src.meta()
        async with slot():
            encoded, image, note = await asyncio.to_thread(
                reencode, spooled, wanted, meta, quality=quality
            )
    except Undecodable as e:
        note = f"kept as {upstream}: cannot re-encode it ({e})"
        log.warning("result stored as the upstream made it", reason=note)
        return await _upload(storage, dest, upstream, got, read(spooled), describe, note, seen=seen)
    finally:
        spooled.close()
    log.info("result re-encoded", note=note)
    try:
        return await _upload(storage, dest, wanted, image, read(encoded), describe, note, seen=seen)
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
    *,
    seen: Mapping[str, str | None] | None = None,
) -> Output:
    final = S3Object(bucket=dest.bucket, key=key_for(dest.key, fmt))
    expect = seen[final.key] if seen is not None and final.key in seen else UNKNOWN
    stored = await storage.upload_stream(
        final, chunks, describe=lambda _first: describe(image), expect=expect
    )
    return Output(dest=final, stored=stored, image=image, note=note)
