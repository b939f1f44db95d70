"""One parser for every S3 notification shape (see docs in EVENTS.md of the design).

Shapes are detected by structure, never by configuration: S3 -> SQS (direct / SNS raw),
SNS envelopes, EventBridge, MinIO webhook/Kafka/NATS and its Redis `namespace`/`access`
formats, SeaweedFS filer webhooks, and `s3:TestEvent`. Only object-created events become
`ObjectEvent`s; everything else is listed in `ignored` with a reason, so callers can log and
acknowledge it. Keys are decoded once and then kept verbatim.
"""

from producers.events.batch_operations import (
    BatchTask,
    batch_operations_response,
    parse_batch_operations,
)
from producers.events.model import (
    MalformedEvent,
    ObjectEvent,
    ParsedNotification,
    latest_per_key,
    newer_sequencer,
)
from producers.events.parse import parse_notification

__all__ = [
    "BatchTask",
    "MalformedEvent",
    "ObjectEvent",
    "ParsedNotification",
    "batch_operations_response",
    "latest_per_key",
    "newer_sequencer",
    "parse_batch_operations",
    "parse_notification",
]
