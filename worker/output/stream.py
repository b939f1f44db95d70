"""The result as a stream: its first bytes (to sniff), the whole of it again, or spooled to a
file (in memory, then on disk beyond `SPOOL_BYTES`) and read back in chunks."""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import AsyncIterator
from typing import IO

SPOOL_BYTES = 4 * 1024 * 1024  # a spooled result moves from memory to disk beyond this
PEEK_BYTES = 64 * 1024  # enough of a result or a source to know its format
READ_CHUNK = 1024 * 1024


class Spool(tempfile.SpooledTemporaryFile[bytes]):
    """A spooled file Pillow writes into through `write` while it is in memory: asking for a
    `fileno()` (Pillow's fast path) would move even a small image to disk."""

    def fileno(self) -> int:
        if not getattr(self, "_rolled", True):
            raise io.UnsupportedOperation("in memory")
        return super().fileno()


async def peek(chunks: AsyncIterator[bytes]) -> tuple[bytes, AsyncIterator[bytes]]:
    """The first `PEEK_BYTES` (or more) of `chunks`, and the rest of it."""
    buf = bytearray()
    it = aiter(chunks)
    while len(buf) < PEEK_BYTES:
        try:
            buf += await anext(it)
        except StopAsyncIteration:
            break
    return bytes(buf), it


async def chain(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The stream `peek` took apart, whole again."""
    if head:
        yield head
    async for chunk in rest:
        yield chunk


async def close(it: AsyncIterator[bytes]) -> None:
    """Close a stream that will not be read to its end."""
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()


async def spool(head: bytes, rest: AsyncIterator[bytes]) -> Spool:
    """The whole stream in a `Spool` (the caller closes it)."""
    f = Spool(max_size=SPOOL_BYTES)
    try:
        f.write(head)
        async for chunk in rest:
            await asyncio.to_thread(f.write, chunk)
    except BaseException:
        f.close()
        raise
    return f


async def read(f: IO[bytes]) -> AsyncIterator[bytes]:
    """A file from its start, in chunks of `READ_CHUNK` (read in a thread)."""
    f.seek(0)
    while chunk := await asyncio.to_thread(f.read, READ_CHUNK):
        yield chunk
