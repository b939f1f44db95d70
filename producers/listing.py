"""Fast, ordered S3 listing for backfills: pages of objects in key order, fetched ahead.

botocore's XML parser costs ~120 µs per listed key (as much CPU as building and enqueuing the
job), so a ListObjectsV2 response is parsed here with the C ElementTree instead: botocore
still signs, sends and retries the request (a `before-parse` hook swaps in the parsed page,
only for calls made through `list_page`). Top-level common prefixes are listed several at a
time and handed out strictly in key order, so "the last key handled" stays a correct
checkpoint: every key before it was handled, none after it was.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import posixpath
import threading
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

_EMPTY = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"></ListBucketResult>'
)
_PAGE = "UqPage"  # where the hook leaves the parsed page in botocore's response
_local = threading.local()  # the hook acts only inside `list_page` (other calls stay botocore's)
_hooked: set[int] = set()


@dataclass(slots=True)
class ObjectEntry:
    """One candidate object. `cursor`: where a resumed run starts after this entry."""

    bucket: str
    key: str
    size: int | None = None
    modified: datetime | None = None
    etag: str | None = None
    version_id: str | None = None
    cursor: str = ""


@dataclass(slots=True)
class Page:
    entries: list[ObjectEntry]
    cursor: str  # resume point once every entry (and any row skipped) in the page is handled
    skipped: dict[str, int] = field(default_factory=dict)  # rows the reader left out, by reason


@dataclass(slots=True)
class Listed:
    entries: list[ObjectEntry]
    prefixes: list[str]
    next_token: str | None


def _on_before_parse(
    response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any
) -> None:
    if not getattr(_local, "bucket", None) or response_dict.get("status_code") != 200:
        return
    customized_response_dict[_PAGE] = parse_listing(_local.bucket, response_dict["body"])
    response_dict["body"] = _EMPTY  # botocore parses an empty page: nothing to do twice


def parse_listing(bucket: str, body: bytes) -> Listed:
    root = ET.fromstring(body)
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    encoded = (root.findtext(f"{ns}EncodingType") or "") == "url"

    def name(s: str) -> str:
        return unquote_plus(s) if encoded else s

    entries = []
    for c in root.iterfind(f"{ns}Contents"):
        key = name(c.findtext(f"{ns}Key") or "")
        modified = c.findtext(f"{ns}LastModified")
        entries.append(
            ObjectEntry(
                bucket=bucket,
                key=key,
                size=int(c.findtext(f"{ns}Size") or 0),
                modified=datetime.fromisoformat(modified) if modified else None,
                etag=(c.findtext(f"{ns}ETag") or "").strip('"') or None,
                cursor=key,
            )
        )
    prefixes = [name(p.findtext(f"{ns}Prefix") or "") for p in root.iterfind(f"{ns}CommonPrefixes")]
    truncated = (root.findtext(f"{ns}IsTruncated") or "").lower() == "true"
    token = root.findtext(f"{ns}NextContinuationToken") if truncated else None
    return Listed(entries, prefixes, token)


def list_page(
    s3: Any,
    bucket: str,
    prefix: str,
    *,
    token: str | None = None,
    start_after: str = "",
    delimiter: str = "",
    max_keys: int = 1000,
) -> Listed:
    """One ListObjectsV2 request (blocking: run it in a thread)."""
    if id(s3) not in _hooked:
        s3.meta.events.register("before-parse.s3.ListObjectsV2", _on_before_parse)
        _hooked.add(id(s3))
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
    if token:
        kwargs["ContinuationToken"] = token
    elif start_after:
        kwargs["StartAfter"] = start_after
    if delimiter:
        kwargs["Delimiter"] = delimiter
    _local.bucket = bucket
    try:
        reply = s3.list_objects_v2(**kwargs)
    finally:
        _local.bucket = None
    listed: Listed = reply[_PAGE]
    return listed


@dataclass(frozen=True, slots=True)
class _Unit:
    """A run of keys, in order: a common prefix to list, or objects already listed."""

    prefix: str | None = None
    start_after: str = ""
    entries: tuple[ObjectEntry, ...] = ()


class OrderedLister:
    """Every object under `bucket/prefix` after `start_after`, as pages in key order.

    `parallel` top-level common prefixes are listed at once, each `ahead` pages ahead of the
    consumer (memory: parallel x ahead pages); a flat prefix is one stream, still fetched ahead.
    """

    def __init__(
        self,
        s3: Any,
        bucket: str,
        prefix: str,
        start_after: str = "",
        *,
        parallel: int = 4,
        ahead: int = 2,
        resume_order: str = "",
    ) -> None:
        self.s3, self.bucket, self.prefix = s3, bucket, prefix
        self.start_after = start_after
        self.parallel, self.ahead = max(1, parallel), max(1, ahead)
        self.requests = 0
        self.resume_order = resume_order  # the order the checkpoint was taken in ("": unknown)
        self.order = ""  # "units" (sorted top-level prefixes) or "stream" (one listing)

    async def _call(self, prefix: str, **kw: Any) -> Listed:
        self.requests += 1
        return await asyncio.to_thread(list_page, self.s3, self.bucket, prefix, **kw)

    async def _units(self) -> AsyncIterator[_Unit]:
        """Top-level common prefixes (and the objects between them), sorted by name, when they
        fit in one delimiter page; else (or `parallel` 1) one stream in the server's order.

        Servers differ in how they order `a/` against `a.b/` (AWS by bytes, SeaweedFS by
        directory), so across units the order is ours (sorted names, held in one page) and
        within a unit the server's; `self.order` says which one a checkpoint belongs to."""
        if self.parallel > 1:
            page = await self._call(self.prefix, delimiter="/")
            if not page.next_token and page.prefixes:
                self.order = "units"
                if self.start_after and self.resume_order not in ("", "units"):
                    self.start_after = ""  # a checkpoint of the other order: start over (dedup)
                for unit in self._sorted_units(page):
                    yield unit
                return
        self.order = "stream"
        if self.resume_order not in ("", "stream"):
            self.start_after = ""
        yield _Unit(prefix=self.prefix, start_after=self.start_after)

    def _sorted_units(self, page: Listed) -> Iterator[_Unit]:
        cursor = self.start_after
        rest = cursor[len(self.prefix) :]
        current = self.prefix + rest.split("/", 1)[0] + "/" if "/" in rest else cursor
        items: list[tuple[str, ObjectEntry | None]] = [(e.key, e) for e in page.entries]
        items += [(p, None) for p in page.prefixes]
        items.sort(key=lambda kv: kv[0])
        run: list[ObjectEntry] = []
        for name, entry in items:
            if cursor and name <= current:
                if name == current and entry is None:  # stopped inside this prefix
                    yield _Unit(prefix=name, start_after=cursor)
                continue  # handled before the checkpoint
            if entry is not None:
                run.append(entry)
                continue
            if run:
                yield _Unit(entries=tuple(run))
                run = []
            yield _Unit(prefix=name)
        if run:
            yield _Unit(entries=tuple(run))

    async def _run_unit(self, unit: _Unit, out: asyncio.Queue[Page | None]) -> None:
        try:
            if unit.prefix is None:
                await out.put(Page(list(unit.entries), unit.entries[-1].key))
            else:
                token: str | None = None
                while True:
                    page = await self._call(unit.prefix, token=token, start_after=unit.start_after)
                    if page.entries:
                        await out.put(Page(page.entries, page.entries[-1].key))
                    if not page.next_token:
                        break
                    token = page.next_token
        except asyncio.CancelledError:
            raise  # the consumer is gone: nobody reads the end mark
        except BaseException:
            await out.put(None)  # the end mark first, then `await task` raises it
            raise
        await out.put(None)

    async def pages(self) -> AsyncGenerator[Page, None]:
        window: deque[tuple[asyncio.Queue[Page | None], asyncio.Task[None]]] = deque()
        units = aiter(self._units())
        more = True

        async def fill() -> None:
            nonlocal more
            while more and len(window) < self.parallel:
                unit = await anext(units, None)
                if unit is None:
                    more = False
                    return
                q: asyncio.Queue[Page | None] = asyncio.Queue(self.ahead)
                window.append((q, asyncio.create_task(self._run_unit(unit, q))))

        try:
            await fill()
            while window:
                q, task = window[0]
                while (page := await q.get()) is not None:
                    yield page
                await task  # a listing error surfaces here, in order
                window.popleft()
                await fill()
        finally:
            for _, task in window:
                task.cancel()
            for _, task in window:
                with contextlib.suppress(BaseException):
                    await task


class ExistingOutputs:
    """Which destination keys exist, by listing the destination (1 request per 1,000 keys).

    `check` takes one page of destination keys and lists only the range they span, from the
    lowest extension-less stem up to the highest stem + "/" (every `stem.*` sorts inside it),
    continuing from the previous page's range when pages move forward (they do: sources come
    in key order, and a destination key differs from its source only after the stem), so
    memory is one window, whatever the template reorders. A window over `max_window` keys (a
    template that scatters keys, like `{basename}`) gives up for that page: "unknown".
    """

    def __init__(self, s3: Any, bucket: str, *, max_window: int = 20_000) -> None:
        self.s3, self.bucket, self.max_window = s3, bucket, max_window
        self.keys: list[str] = []  # sorted, every key in [lo, read_to]
        self.lo = "\U0010ffff"
        self.read_to: str | None = None  # last key read (None: nothing read yet)
        self.token: str | None = None
        self.done = False
        self.requests = 0

    def _restart(self, lo: str) -> None:
        self.keys, self.lo, self.token, self.done = [], lo, None, False
        self.read_to = lo[:-1]  # StartAfter a prefix of lo: keys >= lo all come back

    def check(self, dest_keys: list[str]) -> list[str]:
        """Per key: "exists" (that key is there), "new" (no key with its stem: the worker
        may skip its HEAD) or "unknown" (a sibling with another extension, or no window)."""
        if not dest_keys:
            return []
        stems = [posixpath.splitext(k)[0] for k in dest_keys]
        lo, hi = min(stems), max(stems) + "/"
        if lo < self.lo:
            self._restart(lo)
        else:  # moving forward: forget what no key of this page can match
            self.keys = self.keys[bisect.bisect_left(self.keys, lo) :]
            self.lo = lo
        while not self.done and (self.read_to is None or self.read_to < hi):
            if len(self.keys) > self.max_window:
                self._restart("\U0010ffff")
                return ["unknown"] * len(dest_keys)
            try:
                page = list_page(
                    self.s3, self.bucket, "", token=self.token, start_after=self.read_to or ""
                )
            except self.s3.exceptions.NoSuchBucket:
                page = Listed([], [], None)  # no bucket, no outputs (the worker creates none)
            self.requests += 1
            self.keys += [e.key for e in page.entries if e.key >= lo]
            if page.entries:
                self.read_to = page.entries[-1].key
            self.token = page.next_token
            self.done = not page.next_token
        present = set(self.keys[: bisect.bisect_left(self.keys, hi)])
        by_stem: dict[str, int] = {}
        for k in present:
            s = posixpath.splitext(k)[0]
            by_stem[s] = by_stem.get(s, 0) + 1
        out = []
        for key, stem in zip(dest_keys, stems, strict=True):
            if key in present:
                out.append("exists")
            else:
                out.append("unknown" if by_stem.get(stem) else "new")
        return out
