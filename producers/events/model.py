"""What a notification parses into, and the small readers every shape shares."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from worker.api import S3Object


class MalformedEvent(ValueError):
    """A body that no known notification shape matches (or that is broken inside)."""


@dataclass(frozen=True)
class ObjectEvent:
    bucket: str
    key: str
    version_id: str | None
    etag: str | None
    size: int | None
    sequencer: str | None
    event_name: str
    event_time: str | None
    source_format: str
    user_metadata: dict[str, str] = field(default_factory=dict)

    def to_s3_object(self) -> S3Object:
        try:
            return S3Object(
                bucket=self.bucket, key=self.key, version_id=self.version_id, etag=self.etag
            )
        except ValidationError as e:
            raise MalformedEvent(f"invalid object in event: {e.errors()[0]['msg']}") from e


@dataclass
class ParsedNotification:
    created: list[ObjectEvent] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    # Broken records of a batch, with the reason: the good ones still count.
    rejected: list[str] = field(default_factory=list)


def newer_sequencer(a: str | None, b: str | None) -> bool:
    """True when sequencer `a` is later than `b` (AWS: right-pad the shorter with 0, compare)."""
    if not a:
        return False
    if not b:
        return True
    width = max(len(a), len(b))
    return a.upper().ljust(width, "0") > b.upper().ljust(width, "0")


def latest_per_key(events: list[ObjectEvent]) -> list[ObjectEvent]:
    """Of the events for one bucket/key that carry a `sequencer`, only the latest (AWS: a key's
    events are ordered by sequencer, not by arrival; an older version's job would only end
    superseded in the worker). Events without one are all kept: the worker orders them by the
    source's current version. The order of the rest is kept."""
    kept: list[ObjectEvent] = []
    latest: dict[tuple[str, str], int] = {}  # the key's sequenced event: its index in `kept`
    for ev in events:
        k = (ev.bucket, ev.key)
        if not ev.sequencer:
            kept.append(ev)
        elif k not in latest:
            latest[k] = len(kept)
            kept.append(ev)
        elif newer_sequencer(ev.sequencer, kept[latest[k]].sequencer):
            kept[latest[k]] = ev
    return kept


def each(items: list[tuple[str, Any]], out: ParsedNotification, fn: Callable[[Any], None]) -> None:
    """Parse the records of a batch one by one: a broken one is rejected, not the batch."""
    for label, item in items:
        try:
            fn(item)
        except MalformedEvent as e:
            out.rejected.append(f"{label}: {e}" if label else str(e))


def opt(v: Any) -> str | None:
    return str(v) if v not in (None, "") else None


def int_or_none(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def str_dict(v: Any) -> dict[str, str]:
    """User metadata as lower-case names without the `x-amz-meta-` prefix (MinIO keeps it)."""
    if not isinstance(v, dict):
        return {}
    return {str(k).lower().removeprefix("x-amz-meta-"): str(x) for k, x in v.items()}


def b64_text(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    try:
        return base64.b64decode(v, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return v
