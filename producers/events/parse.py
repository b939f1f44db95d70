"""The entry point: detect a notification's shape by its structure and hand it to its reader."""

from __future__ import annotations

import json
from typing import Any

from producers.events.model import MalformedEvent, ParsedNotification, each, latest_per_key
from producers.events.shapes import eventbridge, records, seaweedfs


def parse_notification(
    body: str | bytes | dict[str, Any] | list[Any], *, eventbridge_keys_encoded: bool = False
) -> ParsedNotification:
    doc = _load(body)
    out = ParsedNotification()
    _dispatch(doc, out, eventbridge_keys_encoded, depth=0)
    kept = latest_per_key(out.created)
    if len(kept) < len(out.created):
        ids = {id(ev) for ev in kept}
        out.ignored += [
            f"s3://{ev.bucket}/{ev.key} (sequencer {ev.sequencer}): a later event for the key "
            "in the same notification supersedes it"
            for ev in out.created
            if id(ev) not in ids
        ]
        out.created = kept
    if out.rejected and not out.created and not out.ignored:
        raise MalformedEvent("; ".join(out.rejected))  # nothing usable at all
    return out


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
        each([("", item) for item in doc], out, lambda d: _dispatch(d, out, eb_encoded, depth + 1))
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
        eventbridge(doc, out, eb_encoded)
    elif "Records" in doc:
        records(doc["Records"], out)
    elif isinstance(doc.get("Event"), list):
        records(doc["Event"], out)  # MinIO Redis `access` entry
    elif "event_type" in doc and isinstance(doc.get("message"), dict):
        seaweedfs(doc, out)
    elif _is_minio_namespace(doc):
        each(
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
