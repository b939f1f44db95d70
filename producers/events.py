"""One parser for every S3 notification shape (see docs in EVENTS.md of the design).

Shapes are detected by structure, never by configuration: S3 -> SQS (direct / SNS raw),
SNS envelopes, EventBridge, MinIO webhook/Kafka/NATS and its Redis `namespace`/`access`
formats, SeaweedFS filer webhooks, and `s3:TestEvent`. Only object-created events become
`ObjectEvent`s; everything else is listed in `ignored` with a reason, so callers can log and
acknowledge it. Keys are decoded once and then kept verbatim.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, unquote_plus

from pydantic import ValidationError

from worker.contract import S3Object


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
    """Drop events superseded by a later sequencer for the same bucket/key/version."""
    best: dict[tuple[str, str, str | None], ObjectEvent] = {}
    for ev in events:
        k = (ev.bucket, ev.key, ev.version_id)
        cur = best.get(k)
        if cur is None or newer_sequencer(ev.sequencer, cur.sequencer):
            best[k] = ev
    return list(best.values())


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------


def parse_notification(
    body: str | bytes | dict[str, Any] | list[Any], *, eventbridge_keys_encoded: bool = False
) -> ParsedNotification:
    doc = _load(body)
    out = ParsedNotification()
    _dispatch(doc, out, eventbridge_keys_encoded, depth=0)
    if out.rejected and not out.created and not out.ignored:
        raise MalformedEvent("; ".join(out.rejected))  # nothing usable at all
    return out


def _each(items: list[tuple[str, Any]], out: ParsedNotification, fn: Callable[[Any], None]) -> None:
    """Parse the records of a batch one by one: a broken one is rejected, not the batch."""
    for label, item in items:
        try:
            fn(item)
        except MalformedEvent as e:
            out.rejected.append(f"{label}: {e}" if label else str(e))


def _load(body: str | bytes | dict[str, Any] | list[Any]) -> Any:
    if isinstance(body, dict | list):
        return body
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedEvent("notification body is not UTF-8") from e
    if not body.strip():
        raise MalformedEvent("empty notification body")
    try:
        return json.loads(body)
    except json.JSONDecodeError as e:
        raise MalformedEvent(f"notification body is not JSON: {e.msg} at char {e.pos}") from e


def _dispatch(doc: Any, out: ParsedNotification, eb_encoded: bool, depth: int) -> None:
    if depth > 3:
        raise MalformedEvent("notification nested too deeply")
    if isinstance(doc, list):
        # MinIO Redis `access` format: [{"Event": [records...], "EventTime": ...}, ...]
        if not doc:
            raise MalformedEvent("empty JSON array")
        _each([("", item) for item in doc], out, lambda d: _dispatch(d, out, eb_encoded, depth + 1))
        return
    if not isinstance(doc, dict):
        raise MalformedEvent(f"notification is a JSON {type(doc).__name__}, not an object")
    if doc.get("Event") == "s3:TestEvent":
        out.ignored.append(f"s3:TestEvent for bucket {doc.get('Bucket', '?')}")
    elif doc.get("Type") == "Notification" and "Message" in doc:
        inner = doc["Message"]
        if not isinstance(inner, str):
            raise MalformedEvent("SNS envelope Message is not a string")
        _dispatch(_load(inner), out, eb_encoded, depth + 1)
    elif doc.get("Type") == "SubscriptionConfirmation":
        out.ignored.append("SNS SubscriptionConfirmation (confirm the subscription in SNS)")
    elif "detail-type" in doc and doc.get("source") == "aws.s3":
        _eventbridge(doc, out, eb_encoded)
    elif "Records" in doc:
        _records(doc["Records"], out)
    elif isinstance(doc.get("Event"), list):
        _records(doc["Event"], out)  # MinIO Redis `access` entry
    elif "event_type" in doc and isinstance(doc.get("message"), dict):
        _seaweedfs(doc, out)
    elif _is_minio_namespace(doc):
        _each(
            [(str(k), v) for k, v in doc.items()],
            out,
            lambda v: _dispatch(_load(v) if isinstance(v, str) else v, out, eb_encoded, depth + 1),
        )
    else:
        raise MalformedEvent(
            "unrecognised notification shape (expected S3 Records, SNS, EventBridge, "
            f"MinIO or SeaweedFS event); top-level keys: {sorted(doc)[:8]}"
        )


def _is_minio_namespace(doc: dict[str, Any]) -> bool:
    """MinIO Redis `namespace` format: {"bucket/key": "{\"Records\": [...]}"}."""
    return bool(doc) and all(
        "/" in k and (isinstance(v, dict) or (isinstance(v, str) and '"Records"' in v))
        for k, v in doc.items()
    )


# ---------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------


def _records(records: Any, out: ParsedNotification) -> None:
    if not isinstance(records, list):
        raise MalformedEvent("Records is not a list")
    _each(
        [("", (i, rec)) for i, rec in enumerate(records)], out, lambda x: _record(x[0], x[1], out)
    )


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
            version_id=_opt(obj.get("versionId")),
            etag=_opt(obj.get("eTag") or obj.get("etag")),
            size=_int(obj.get("size")),
            sequencer=_opt(obj.get("sequencer")),
            event_name=name.removeprefix("s3:"),
            event_time=_opt(rec.get("eventTime")),
            source_format="minio" if rec.get("eventSource") == "minio:s3" else "s3",
            user_metadata=_str_dict(obj.get("userMetadata")),
        )
    )


def _eventbridge(doc: dict[str, Any], out: ParsedNotification, keys_encoded: bool) -> None:
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
            version_id=_opt(obj.get("version-id")),
            etag=_opt(obj.get("etag")),
            size=_int(obj.get("size")),
            sequencer=_opt(obj.get("sequencer")),
            event_name=f"ObjectCreated:{detail.get('reason', '')}".rstrip(":"),
            event_time=_opt(doc.get("time")),
            source_format="eventbridge",
        )
    )


def _seaweedfs(doc: dict[str, Any], out: ParsedNotification) -> None:
    path = doc.get("key")
    kind = doc.get("event_type")
    msg = doc["message"]
    entry = msg.get("new_entry")
    if not isinstance(path, str) or not path.startswith("/buckets/"):
        out.ignored.append(f"filer event outside /buckets: {path!r}")
        return
    bucket, _, key = path[len("/buckets/") :].partition("/")
    if kind != "create":
        out.ignored.append(f"filer {kind} {path}")
        return
    if not key or bucket == ".system" or key.startswith(".uploads/"):
        out.ignored.append(f"filer internal entry {path}")
        return
    if not isinstance(entry, dict) or entry.get("is_directory"):
        out.ignored.append(f"filer directory {path}")
        return
    ext = entry.get("extended") or {}
    meta: dict[str, str] = {}
    etag = None
    if isinstance(ext, dict):
        for name, value in ext.items():
            text = _b64_text(value)
            if name.lower() == "seaweed-x-amz-etag":
                etag = text.strip('"') if text else None
            elif name.lower().startswith("x-amz-meta-"):
                meta[name[len("x-amz-meta-") :].lower()] = text or ""
    attrs = entry.get("attributes") or {}
    out.created.append(
        ObjectEvent(
            bucket=bucket,
            key=key,
            version_id=None,
            etag=etag,
            size=_int(attrs.get("file_size")) if isinstance(attrs, dict) else None,
            sequencer=_opt(doc.get("ts_ns") or msg.get("ts_ns")),
            event_name="ObjectCreated:Put",
            event_time=None,
            source_format="seaweedfs",
            user_metadata=meta,
        )
    )


# ---------------------------------------------------------------------------------------------
# S3 Batch Operations (Lambda invocation)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchTask:
    task_id: str
    obj: ObjectEvent


def parse_batch_operations(event: dict[str, Any]) -> list[BatchTask]:
    version = event.get("invocationSchemaVersion")
    tasks = event.get("tasks")
    if version not in ("1.0", "2.0") or not isinstance(tasks, list):
        raise MalformedEvent(f"not an S3 Batch Operations invocation (schema {version!r})")
    out = []
    for t in tasks:
        try:
            task_id = t["taskId"]
            # Batch Operations keys are URL-encoded like notifications.
            key = unquote(t["s3Key"])
            bucket = t.get("s3Bucket") or str(t["s3BucketArn"]).split(":::", 1)[1]
        except (KeyError, TypeError, IndexError) as e:
            raise MalformedEvent(f"Batch Operations task is missing field {e}") from e
        out.append(
            BatchTask(
                task_id,
                ObjectEvent(
                    bucket=bucket,
                    key=key,
                    version_id=_opt(t.get("s3VersionId")),
                    etag=None,
                    size=None,
                    sequencer=None,
                    event_name="BatchOperations",
                    event_time=None,
                    source_format="batch-operations",
                ),
            )
        )
    return out


def batch_operations_response(
    event: dict[str, Any], results: dict[str, tuple[str, str]]
) -> dict[str, Any]:
    """The response S3 Batch Operations expects: one result per task."""
    return {
        "invocationSchemaVersion": event.get("invocationSchemaVersion", "1.0"),
        "treatMissingKeysAs": "PermanentFailure",
        "invocationId": event.get("invocationId", ""),
        "results": [
            {"taskId": tid, "resultCode": code, "resultString": msg[:1024]}
            for tid, (code, msg) in results.items()
        ],
    }


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _opt(v: Any) -> str | None:
    return str(v) if v not in (None, "") else None


def _int(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _str_dict(v: Any) -> dict[str, str]:
    """User metadata as lower-case names without the `x-amz-meta-` prefix (MinIO keeps it)."""
    if not isinstance(v, dict):
        return {}
    return {str(k).lower().removeprefix("x-amz-meta-"): str(x) for k, x in v.items()}


def _b64_text(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    try:
        return base64.b64decode(v, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return v
