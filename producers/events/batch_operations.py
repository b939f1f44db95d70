"""S3 Batch Operations: a Lambda invocation's tasks in, one result per task out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from producers.events.model import MalformedEvent, ObjectEvent, opt


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
                    version_id=opt(t.get("s3VersionId")),
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
