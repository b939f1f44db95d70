"""AWS Lambda entry point: `producers.lambda_handler.handler`.

Accepts an SQS event (S3 notifications inside; partial batch failures reported so only the
failed messages are retried), a direct S3 event, an EventBridge event, or an S3 Batch
Operations invocation: its tasks go into the bulk lane under a batch named after the Batch
Operations job (`s3-batch-<job id>`), with per-task result codes; while the bulk queue is over
its limit every task is answered `TemporaryFailure`, so Batch Operations retries it later
instead of the queue growing without bound.

A malformed SQS message (or one with broken records next to good ones) is reported as a batch
item failure, never acknowledged: Lambda deletes every message it is not told failed, and what
AWS users expect of a poison message is the source queue's redrive policy moving it, body intact,
to its dead-letter queue after `maxReceiveCount` tries (`infra/terraform`: 5), where the console's
DLQ redrive can send it back once the cause is fixed. Each one is logged with its reason and
counted (`uq:intake` `malformed` / `rejected`); good records of the same message are enqueued at
once and are duplicates on the retries. Logs follow `UPSCALE_LOG_FORMAT` (JSON lines for
CloudWatch when `json`, or `auto` off a terminal).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from producers.api import Producer
from producers.backfill import bulk_room
from producers.events import MalformedEvent, batch_operations_response, parse_batch_operations
from producers.intake import IntakeReport, count, enqueue_notification, guard_for, specs_for
from worker.api import configure_logging, get_settings

log = structlog.get_logger("producers.lambda")


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return asyncio.run(handle(event))


async def handle(event: dict[str, Any]) -> dict[str, Any]:
    settings = get_settings()
    configure_logging(settings.ops.log_format, settings.ops.log_level)  # once per process
    async with Producer.connect(settings) as producer:
        if "invocationSchemaVersion" in event:
            return await _batch_operations(producer, event)
        records = event.get("Records")
        if isinstance(records, list) and records and records[0].get("eventSource") == "aws:sqs":
            return await _sqs(producer, records)
        report = await enqueue_notification(producer, event, source="lambda")
        return report.as_dict()


async def _sqs(producer: Producer, records: list[dict[str, Any]]) -> dict[str, Any]:
    failures: list[dict[str, str]] = []
    for r in records:
        message_id = str(r.get("messageId", ""))
        try:
            report = await enqueue_notification(producer, r["body"], source="lambda")
        except MalformedEvent as e:  # counted and logged by intake; the redrive policy decides
            _failed(failures, message_id, f"malformed: {e}")
            continue
        except Exception as e:  # Redis down etc.: retried
            _failed(failures, message_id, f"not enqueued: {type(e).__name__}: {e}")
            continue
        if report.rejected:  # the good records are in; keep the broken ones on the queue
            _failed(failures, message_id, "rejected records: " + "; ".join(report.rejected))
    return {"batchItemFailures": failures}


def _failed(failures: list[dict[str, str]], message_id: str, reason: str) -> None:
    log.warning(
        "SQS message reported as a batch item failure (retried, then the queue's DLQ)",
        message_id=message_id,
        reason=reason[:1000],
    )
    failures.append({"itemIdentifier": message_id})


async def _batch_operations(producer: Producer, event: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, tuple[str, str]] = {}
    try:
        tasks = parse_batch_operations(event)
    except MalformedEvent as e:
        return batch_operations_response(
            event,
            {
                t.get("taskId", ""): ("PermanentFailure", str(e))
                for t in event.get("tasks", [])
                if isinstance(t, dict)
            },
        )
    batch = batch_name(event)
    if not await bulk_room(producer.redis, producer.settings, len(tasks)):
        busy = "bulk queue is full (back-pressure): retry later"
        return batch_operations_response(
            event, {t.task_id: ("TemporaryFailure", busy) for t in tasks}
        )
    guard = guard_for(producer)
    for task in tasks:
        report = IntakeReport()
        try:
            specs = await specs_for([task.obj], guard, producer, report)
            if report.rejected or report.ignored:  # logged and counted like any event's
                await count(producer, report, source="batch-operations")
            if report.rejected:
                results[task.task_id] = ("PermanentFailure", "; ".join(report.rejected))
                continue
            if not specs:
                results[task.task_id] = ("Succeeded", f"skipped: {'; '.join(report.ignored)}")
                continue
            bulk = [s.model_copy(update={"lane": "bulk", "batch": batch}) for s in specs]
            (r,) = await producer.enqueue_specs(bulk)
            results[task.task_id] = ("Succeeded", f"{r.outcome} {r.job_id}")
        except ValueError as e:
            results[task.task_id] = ("PermanentFailure", str(e))
        except Exception as e:
            results[task.task_id] = ("TemporaryFailure", f"{type(e).__name__}: {e}")
    return batch_operations_response(event, results)


def batch_name(event: dict[str, Any]) -> str:
    """`s3-batch-<job id>`: one batch per Batch Operations job (status, spend, budget)."""
    job = event.get("job")
    raw = str(job.get("id") or "") if isinstance(job, dict) else ""
    safe = "".join(c if c.isalnum() or c in "-._:@" else "-" for c in raw)[:180]
    return f"s3-batch-{safe or 'unknown'}"
