"""`upscale sqs`: consume S3 notifications from SQS.

Long polling, batch receive; a message is deleted only after its jobs are safely in Redis
(a crash in between redelivers it, and the deterministic job ids absorb the duplicate).
A malformed message never crashes the consumer: it goes to the dead-letter path with its
reason (an SQS DLQ when `--dlq-url` is given, else the Redis list `uq:dead-letters`) and is
then deleted.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from producers.api import Producer
from producers.errors import AwsCallFailed, Endpoint, endpoint_of
from producers.events import MalformedEvent
from producers.intake import enqueue_notification
from worker.api import Keys

log = structlog.get_logger("producers.sqs")
DEAD_LETTERS = Keys.dead_letters


@dataclass
class ConsumerStats:
    messages: int = 0
    enqueued: int = 0
    duplicates: int = 0
    ignored: int = 0
    dead_lettered: int = 0
    errors: int = 0
    started: float = field(default_factory=time.monotonic)


class SqsConsumer:
    def __init__(
        self,
        producer: Producer,
        sqs: Any,
        queue_url: str,
        *,
        dlq_url: str | None = None,
        wait_s: int = 20,
        batch: int = 10,
        visibility_s: int | None = None,
        endpoint_flag: str | None = None,
    ) -> None:
        self.producer = producer
        self.sqs = sqs
        self.queue_url = queue_url
        self.dlq_url = dlq_url
        self.wait_s = wait_s
        self.batch = min(10, max(1, batch))
        self.visibility_s = visibility_s
        self.stats = ConsumerStats()
        meta = getattr(sqs, "meta", None)
        self.endpoint: Endpoint = endpoint_of(
            "sqs",
            used=getattr(meta, "endpoint_url", None),
            flag=endpoint_flag,
            region=getattr(meta, "region_name", None),
        )

    async def _call(self, subject: str, fn: Any, **kwargs: Any) -> Any:
        """One SQS request; its botocore error names SQS, the endpoint and where it came from."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(fn, **kwargs)
        except (BotoCoreError, ClientError) as e:
            raise AwsCallFailed(self.endpoint, subject, e) from e

    async def poll_once(self) -> int:
        """Receive one batch, enqueue, delete what is safely enqueued. Returns messages seen."""
        kwargs: dict[str, Any] = {
            "QueueUrl": self.queue_url,
            "MaxNumberOfMessages": self.batch,
            "WaitTimeSeconds": self.wait_s,
        }
        if self.visibility_s:
            kwargs["VisibilityTimeout"] = self.visibility_s
        resp = await self._call(self.queue_url, self.sqs.receive_message, **kwargs)
        messages = resp.get("Messages", [])
        done: list[dict[str, str]] = []
        for m in messages:
            self.stats.messages += 1
            try:
                report = await enqueue_notification(self.producer, m["Body"], source="sqs")
            except MalformedEvent as e:
                await self._dead_letter(m, str(e))
                self.stats.dead_lettered += 1
            except Exception as e:  # Redis down etc.: keep the message; SQS redelivers it
                self.stats.errors += 1
                log.warning(
                    "message not enqueued; it will be redelivered",
                    error=str(e),
                    message_id=m.get("MessageId"),
                )
                continue
            else:
                self.stats.enqueued += len(report.enqueued)
                self.stats.duplicates += len(report.duplicates)
                self.stats.ignored += len(report.ignored)
                if report.rejected:  # the good records are in; keep the broken ones visible
                    await self._dead_letter(m, "rejected records: " + "; ".join(report.rejected))
                    self.stats.dead_lettered += 1
            done.append({"Id": str(len(done)), "ReceiptHandle": m["ReceiptHandle"]})
        if done:
            await self._call(
                self.queue_url, self.sqs.delete_message_batch, QueueUrl=self.queue_url, Entries=done
            )
        return len(messages)

    async def _dead_letter(self, message: dict[str, Any], reason: str) -> None:
        log.warning(
            "malformed message dead-lettered", reason=reason, message_id=message.get("MessageId")
        )
        if self.dlq_url:
            await self._call(
                self.dlq_url,
                self.sqs.send_message,
                QueueUrl=self.dlq_url,
                MessageBody=message["Body"],
                MessageAttributes={"reason": {"DataType": "String", "StringValue": reason[:1000]}},
            )
        else:
            entry = {
                "message_id": message.get("MessageId"),
                "reason": reason,
                "body": message["Body"][:100_000],
                "at": time.time(),
            }
            await self.producer.redis.lpush(DEAD_LETTERS, json.dumps(entry))  # type: ignore[misc]
            await self.producer.redis.ltrim(DEAD_LETTERS, 0, 9999)  # type: ignore[misc]

    async def run(self, *, until_empty: bool = False) -> ConsumerStats:
        while True:
            n = await self.poll_once()
            if until_empty and n == 0:
                return self.stats
