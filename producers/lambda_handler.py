"""AWS Lambda entry point: `producers.lambda_handler.handler`.

Accepts an SQS event (S3 notifications inside; partial batch failures reported so only the
failed messages are retried), a direct S3 event, an EventBridge event, or an S3 Batch
Operations invocation: its tasks go into the bulk lane under a batch named after the Batch
Operations job (`s3-batch-<job id>`), with per-task result codes; while the bulk queue is over
its limit every task is answered `TemporaryFailure`, so Batch Operations retries it later
instead of the queue growing without bound.
"""

from __future__ import annotations

import asyncio
from typing import Any

from producers.api import Producer
from producers.backfill import bulk_room
from producers.events import MalformedEvent, batch_operations_response, parse_batch_operations
from producers.intake import IntakeReport, enqueue_notification, guard_for, specs_for


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return asyncio.run(handle(event))


async def handle(event: dict[str, Any]) -> dict[str, Any]:
    async with Producer.connect() as producer:
        if "invocationSchemaVersion" in event:
            return await _batch_operations(producer, event)
        records = event.get("Records")
        if isinstance(records, list) and records and records[0].get("eventSource") == "aws:sqs":
            return await _sqs(producer, records)
        report = await enqueue_notification(producer, event)
        return report.as_dict()


async def _sqs(producer: Producer, records: list[dict[str, Any]]) -> dict[str, Any]:
    failures = []
    for r in records:
        try:
            await enqueue_notification(producer, r["body"])
        except MalformedEvent:
            continue  # a retry cannot fix it: acknowledge (it is logged by the parser's caller)
        except Exception:
            failures.append({"itemIdentifier": r.get("messageId", "")})
    return {"batchItemFailures": failures}


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
            specs = specs_for([task.obj], guard, producer, report)
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
