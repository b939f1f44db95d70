"""One reader per notification shape: S3 `Records` (AWS, MinIO), EventBridge, SeaweedFS filer."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

from producers.events.model import (
    MalformedEvent,
    ObjectEvent,
    ParsedNotification,
    b64_text,
    each,
    int_or_none,
    opt,
    str_dict,
)


def records(records: Any, out: ParsedNotification) -> None:
    if not isinstance(records, list):
        raise MalformedEvent("Records is not a list")
    each([("", (i, rec)) for i, rec in enumerate(records)], out, lambda x: _record(x[0], x[1], out))


def _record(i: int, rec: Any, out: ParsedNotification) -> None:
    if not isinstance(rec, dict):
        raise MalformedEvent(f"Records[{i}] is not an object")
    name = str(rec.get("eventName", ""))
    s3 = rec.get("s3")
    if not isinstance(s3, dict):
        raise MalformedEvent(f"Records[{i}] has no s3 section (eventName={name!r})")
    try:
        bucket = s3["bucket"]["name"]
        obj = s3["object"]
        raw_key = obj["key"]
    except (KeyError, TypeError) as e:
        raise MalformedEvent(f"Records[{i}] is missing s3 field {e}") from e
    if not isinstance(raw_key, str) or not isinstance(bucket, str):
        raise MalformedEvent(f"Records[{i}] bucket/key are not strings")
    # Both AWS and MinIO form-encode keys: `+` is a space, `%2B` a literal plus.
    key = unquote_plus(raw_key)
    if "ObjectCreated" not in name:
        out.ignored.append(f"{name or 'unnamed event'} s3://{bucket}/{key}")
        return
    out.created.append(
        ObjectEvent(
            bucket=bucket,
            key=key,
            version_id=opt(obj.get("versionId")),
            etag=opt(obj.get("eTag") or obj.get("etag")),
            size=int_or_none(obj.get("size")),
            sequencer=opt(obj.get("sequencer")),
            event_name=name.removeprefix("s3:"),
            event_time=opt(rec.get("eventTime")),
            source_format="minio" if rec.get("eventSource") == "minio:s3" else "s3",
            user_metadata=str_dict(obj.get("userMetadata")),
        )
    )


def eventbridge(doc: dict[str, Any], out: ParsedNotification, keys_encoded: bool) -> None:
    detail = doc.get("detail")
    kind = str(doc.get("detail-type", ""))
    if not isinstance(detail, dict):
        raise MalformedEvent("EventBridge event has no detail object")
    try:
        bucket = detail["bucket"]["name"]
        obj = detail["object"]
        key = obj["key"]
    except (KeyError, TypeError) as e:
        raise MalformedEvent(f"EventBridge detail is missing field {e}") from e
    if keys_encoded:
        key = unquote_plus(key)
    if kind != "Object Created":
        out.ignored.append(f"{kind} s3://{bucket}/{key}")
        return
    out.created.append(
        ObjectEvent(
            bucket=bucket,
            key=key,
            version_id=opt(obj.get("version-id")),
            etag=opt(obj.get("etag") or obj.get("eTag")),  # AWS documents etag; moto sends eTag
            size=int_or_none(obj.get("size")),
            sequencer=opt(obj.get("sequencer")),
            event_name=f"ObjectCreated:{detail.get('reason', '')}".rstrip(":"),
            event_time=opt(doc.get("time")),
            source_format="eventbridge",
        )
    )


def seaweedfs(doc: dict[str, Any], out: ParsedNotification) -> None:
    path = doc.get("key")
    kind = doc.get("event_type")
    msg = doc["message"]
    entry = msg.get("new_entry")
    if not isinstance(path, str) or not path.startswith("/buckets/"):
        out.ignored.append(f"filer event outside /buckets: {path!r}")
        return
    bucket, _, key = path[len("/buckets/") :].partition("/")
    if kind not in ("create", "update"):
        out.ignored.append(f"filer {kind} {path}")
        return
    if not key or bucket == ".system" or key.startswith(".uploads/"):
        out.ignored.append(f"filer internal entry {path}")
        return
    if not isinstance(entry, dict) or entry.get("is_directory"):
        out.ignored.append(f"filer directory {path}")
        return
    etag, meta = _filer_extended(entry)
    if kind == "update" and not _content_changed(msg.get("old_entry"), entry, etag):
        # An overwrite is an `update` of the key's entry; so is a metadata-only change (a
        # copy onto itself, tags): only new content makes a job.
        out.ignored.append(f"filer update of {path} without new content")
        return
    attrs = entry.get("attributes") or {}
    out.created.append(
        ObjectEvent(
            bucket=bucket,
            key=key,
            version_id=None,
            etag=etag,
            size=int_or_none(attrs.get("file_size")) if isinstance(attrs, dict) else None,
            sequencer=opt(doc.get("ts_ns") or msg.get("ts_ns")),
            event_name="ObjectCreated:Put",
            event_time=None,
            source_format="seaweedfs",
            user_metadata=meta,
        )
    )


def _filer_extended(entry: dict[str, Any]) -> tuple[str | None, dict[str, str]]:
    """A filer entry's S3 ETag and user metadata (its `extended` attributes, base64)."""
    ext = entry.get("extended") or {}
    meta: dict[str, str] = {}
    etag = None
    if isinstance(ext, dict):
        for name, value in ext.items():
            text = b64_text(value)
            if name.lower() == "seaweed-x-amz-etag":
                etag = text.strip('"') if text else None
            elif name.lower().startswith("x-amz-meta-"):
                meta[name[len("x-amz-meta-") :].lower()] = text or ""
    return etag, meta


def _content_changed(old: Any, new: dict[str, Any], new_etag: str | None) -> bool:
    """Whether a filer `update` changed the object's bytes: the ETags differ, else (entries
    without one) the MD5 or size. Nothing to compare: changed (a duplicate job id absorbs it)."""
    if not isinstance(old, dict):
        return True
    old_etag, _ = _filer_extended(old)
    if old_etag and new_etag:
        return old_etag != new_etag
    old_attrs, new_attrs = old.get("attributes") or {}, new.get("attributes") or {}
    if not isinstance(old_attrs, dict) or not isinstance(new_attrs, dict):
        return True
    seen = [(old_attrs.get(f), new_attrs.get(f)) for f in ("md5", "file_size")]
    compared = [(a, b) for a, b in seen if a is not None and b is not None]
    return not compared or any(a != b for a, b in compared)
