"""Turn one notification (any S3 event shape) into deduplicated jobs: shared by the webhook,
the SQS consumer and the Lambda handler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import ValidationError

from producers.api import Producer, build_spec
from producers.events import MalformedEvent, ObjectEvent, parse_notification
from producers.guard import RecursionGuard
from worker.api import JobSpec, Keys

log = structlog.get_logger("producers.intake")


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
    return RecursionGuard(s.jobs.dest_template, s.producers.guard_prefixes)


def specs_for(
    events: list[ObjectEvent], guard: RecursionGuard, producer: Producer, report: IntakeReport
) -> list[JobSpec]:
    """Jobs for the events; an event naming an invalid object goes to `report.rejected`."""
    specs = []
    for ev in events:
        try:
            obj = ev.to_s3_object()
            why = guard.reason(obj, ev.user_metadata)
            if why:
                report.ignored.append(f"{obj.uri}: {why}")
                continue
            specs.append(build_spec(obj, lane="live", settings=producer.settings))
        except ValidationError as e:
            report.rejected.append(f"s3://{ev.bucket}/{ev.key}: {e.errors()[0]['msg']}")
        except ValueError as e:
            report.rejected.append(f"s3://{ev.bucket}/{ev.key}: {e}")
    return specs


async def enqueue_notification(
    producer: Producer, body: str | bytes | dict[str, Any]
) -> IntakeReport:
    """Parse, guard, enqueue. Raises `MalformedEvent` for a body no parser understands (or
    whose every record is broken); broken records next to good ones are `rejected`."""
    parsed = parse_notification(
        body, eventbridge_keys_encoded=producer.settings.producers.eventbridge_keys_encoded
    )
    report = IntakeReport(ignored=list(parsed.ignored), rejected=list(parsed.rejected))
    specs = specs_for(parsed.created, guard_for(producer), producer, report)
    if report.rejected and not specs and not report.ignored:
        raise MalformedEvent("; ".join(report.rejected))
    for r in await producer.enqueue_specs(specs):
        (report.duplicates if r.outcome == "duplicate" else report.enqueued).append(r.job_id)
    async with producer.redis.pipeline(transaction=False) as p:
        p.hincrby(Keys.intake, "notifications", 1)
        p.hincrby(Keys.intake, "enqueued", len(report.enqueued))
        p.hincrby(Keys.intake, "duplicates", len(report.duplicates))
        p.hincrby(Keys.intake, "ignored", len(report.ignored))
        p.hincrby(Keys.intake, "rejected", len(report.rejected))
        await p.execute()
    log.info(
        "notification",
        enqueued=len(report.enqueued),
        duplicates=len(report.duplicates),
        ignored=len(report.ignored),
        rejected=len(report.rejected),
    )
    if report.rejected:
        log.warning("records rejected", reasons=report.rejected[:20])
    return report
