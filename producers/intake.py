"""Turn one notification (any S3 event shape) into deduplicated jobs: shared by the webhook,
the SQS consumer and the Lambda handler. Every outcome is counted in the `uq:intake` hash
(notifications, enqueued, duplicates, ignored, rejected, malformed, guard_heads) and every
ignored or rejected record is logged with its reason, whichever path it came in by."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

import structlog
from pydantic import ValidationError

from producers.api import Producer, SourceNotFound, build_spec
from producers.events import MalformedEvent, ObjectEvent, parse_notification
from producers.guard import AMBIGUOUS, RecursionGuard
from worker.api import JobSpec, Keys, S3Object, make_s3_client

log = structlog.get_logger("producers.intake")
MAX_LOGGED = 20  # reasons logged per notification (the counts are exact)


@dataclass
class IntakeReport:
    enqueued: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # broken records, with the reason

    def as_dict(self) -> dict[str, Any]:
        return {
            "enqueued": len(self.enqueued),
            "duplicates": len(self.duplicates),
            "ignored": self.ignored,
            "rejected": self.rejected,
            "job_ids": self.enqueued + self.duplicates,
        }


def guard_for(producer: Producer) -> RecursionGuard:
    s = producer.settings
    return RecursionGuard(s.jobs.dest_template, s.producers.guard_prefixes, s.jobs.report_uri)


# One S3 client per producer, made on the first ambiguous key (most deployments never need it).
_S3: WeakKeyDictionary[Producer, Any] = WeakKeyDictionary()


async def _head_metadata(producer: Producer, obj: S3Object) -> dict[str, str] | None:
    """The object's user metadata, or None when S3 cannot tell (gone, denied, unreachable):
    then the worker's own metadata check, before any call, decides."""
    client = _S3.get(producer)
    if client is None:
        client = _S3[producer] = make_s3_client(producer.settings.s3, fail_fast=True)
    kwargs = {"Bucket": obj.bucket, "Key": obj.key}
    if obj.version_id:
        kwargs["VersionId"] = obj.version_id
    try:
        r = await asyncio.to_thread(client.head_object, **kwargs)
    except Exception as e:  # botocore's errors: the job goes in, the worker decides
        log.warning(
            "guard: HEAD failed; enqueued for the worker to check", uri=obj.uri, error=str(e)
        )
        return None
    return {str(k).lower(): str(v) for k, v in (r.get("Metadata") or {}).items()}


async def guard_reason(
    guard: RecursionGuard, producer: Producer, obj: S3Object, ev: ObjectEvent | None = None
) -> str | None:
    """Why the object is ours (not to be enqueued), or None. A key only its metadata can
    place (outputs among the sources, `{key_stem}@2x.{ext}` in the same bucket) costs one HEAD."""
    carried = (
        ev.user_metadata if ev and (ev.user_metadata or ev.source_format == "seaweedfs") else None
    )
    why = guard.locate(obj, carried)
    if why != AMBIGUOUS:
        return why
    await producer.redis.hincrby(Keys.intake, "guard_heads", 1)  # type: ignore[misc]
    meta = await _head_metadata(producer, obj)
    return guard.reason(obj, meta) if meta is not None else None


async def specs_for(
    events: list[ObjectEvent], guard: RecursionGuard, producer: Producer, report: IntakeReport
) -> list[JobSpec]:
    """Jobs for the events; an event naming an invalid object goes to `report.rejected`, one
    of ours (the recursion guard) to `report.ignored`, with the reason."""
    specs = []
    for ev in events:
        try:
            obj = ev.to_s3_object()
            why = await guard_reason(guard, producer, obj, ev)
            if why:
                report.ignored.append(f"{obj.uri}: {why}")
                continue
            specs.append(build_spec(obj, lane="live", settings=producer.settings))
        except ValidationError as e:
            report.rejected.append(f"s3://{ev.bucket}/{ev.key}: {e.errors()[0]['msg']}")
        except ValueError as e:
            report.rejected.append(f"s3://{ev.bucket}/{ev.key}: {e}")
    return specs


async def count(producer: Producer, report: IntakeReport, *, source: str) -> None:
    """Count a notification's outcome in `uq:intake` and log every ignored or rejected record
    with its reason (`source`: sqs, lambda, webhook)."""
    async with producer.redis.pipeline(transaction=False) as p:
        p.hincrby(Keys.intake, "notifications", 1)
        p.hincrby(Keys.intake, "enqueued", len(report.enqueued))
        p.hincrby(Keys.intake, "duplicates", len(report.duplicates))
        p.hincrby(Keys.intake, "ignored", len(report.ignored))
        p.hincrby(Keys.intake, "rejected", len(report.rejected))
        await p.execute()
    log.info(
        "notification",
        source=source,
        enqueued=len(report.enqueued),
        duplicates=len(report.duplicates),
        ignored=len(report.ignored),
        rejected=len(report.rejected),
    )
    for why in report.ignored[:MAX_LOGGED]:
        log.info("event ignored", source=source, reason=why)
    if report.rejected:
        log.warning("records rejected", source=source, reasons=report.rejected[:MAX_LOGGED])


async def count_malformed(producer: Producer, reason: str, *, source: str) -> None:
    """A notification nothing could be made of: counted (`malformed`) and logged."""
    await producer.redis.hincrby(Keys.intake, "malformed", 1)  # type: ignore[misc]
    log.warning("malformed notification", source=source, reason=reason[:1000])


async def enqueue_notification(
    producer: Producer, body: str | bytes | dict[str, Any], *, source: str = "events"
) -> IntakeReport:
    """Parse, guard, enqueue. Raises `MalformedEvent` for a body no parser understands (or
    whose every record is broken); broken records next to good ones are `rejected`."""
    try:
        parsed = parse_notification(
            body, eventbridge_keys_encoded=producer.settings.producers.eventbridge_keys_encoded
        )
        report = IntakeReport(ignored=list(parsed.ignored), rejected=list(parsed.rejected))
        specs = await specs_for(parsed.created, guard_for(producer), producer, report)
        if report.rejected and not specs and not report.ignored:
            raise MalformedEvent("; ".join(report.rejected))
    except MalformedEvent as e:
        await count_malformed(producer, str(e), source=source)
        raise
    for r in await producer.enqueue_specs(await _present(producer, specs, report)):
        if r.outcome == "refused":
            report.ignored.append(f"{r.job_id}: its batch was cancelled (upscale cancel --batch)")
        else:
            (report.duplicates if r.outcome == "duplicate" else report.enqueued).append(r.job_id)
    await count(producer, report, source=source)
    return report


async def _present(producer: Producer, specs: list[JobSpec], report: IntakeReport) -> list[JobSpec]:
    """The jobs whose source still exists. An event that names no ETag is pinned to the
    object's content at enqueue (`Producer.pin_sources`); one deleted since is normal S3 life,
    not a broken message: it is ignored with its reason."""
    if all(s.source.etag or s.source.version_id for s in specs):
        return specs
    out = []
    for spec in specs:
        try:
            out += await producer.pin_sources([spec])
        except SourceNotFound:
            report.ignored.append(f"{spec.source.uri}: deleted before it was enqueued")
    return out
