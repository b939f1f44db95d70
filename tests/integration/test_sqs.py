"""The SQS consumer end to end against a moto server: enqueue, delete, dead letters, a crash
between enqueue and delete, and Redis down."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from redis.asyncio import Redis

from infra.stack import free_port
from producers.api import Producer
from producers.sqs import DEAD_LETTERS, SqsConsumer
from tests.integration.conftest import Buckets, job_ids
from tests.support import s3_event
from worker.contract import QUEUE_NAME
from worker.settings import Settings


@pytest.fixture(scope="module")
def sqs_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def sqs(sqs_endpoint: str) -> Any:
    return boto3.client(
        "sqs",
        endpoint_url=sqs_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _queue(sqs: Any, name: str) -> str:
    return str(sqs.create_queue(QueueName=name)["QueueUrl"])


def _visible(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"]
    )


async def test_sqs_consumer_enqueues_deletes_and_dead_letters(
    sqs: Any, producer: Producer, buckets: Buckets
) -> None:
    url = _queue(sqs, f"events-{buckets.src}")
    sns_wrapped = json.dumps(
        {"Type": "Notification", "Message": s3_event(buckets.src, "b c.png", etag="2")}
    )
    for body in (
        s3_event(buckets.src, "a+b.png", etag="1"),
        sns_wrapped,
        json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": buckets.src}),
        "this is not json",
    ):
        sqs.send_message(QueueUrl=url, MessageBody=body)
    consumer = SqsConsumer(producer, sqs, url, wait_s=0)
    stats = await consumer.run(until_empty=True)
    assert (stats.messages, stats.enqueued, stats.dead_lettered) == (4, 2, 1)
    assert _visible(sqs, url) == 0  # everything handled was deleted
    (dead,) = await producer.redis.lrange(DEAD_LETTERS, 0, -1)  # type: ignore[misc]  # redis-py's async stubs
    entry = json.loads(dead)
    assert "not JSON" in entry["reason"] and entry["body"] == "this is not json"
    keys = {(await producer.status(j)).source for j in await job_ids(producer.redis)}  # type: ignore[union-attr]  # the job exists
    assert keys == {f"s3://{buckets.src}/a+b.png", f"s3://{buckets.src}/b c.png"}


async def test_sqs_crash_between_enqueue_and_delete_redelivers_into_one_job(
    sqs: Any, producer: Producer, buckets: Buckets
) -> None:
    url = _queue(sqs, f"crash-{buckets.src}")
    sqs.send_message(QueueUrl=url, MessageBody=s3_event(buckets.src, "k.png"))

    class Crash(Exception):
        pass

    class DiesBeforeDelete:
        def __getattr__(self, name: str) -> Any:
            return getattr(sqs, name)

        def delete_message_batch(self, **_: Any) -> None:
            raise Crash  # the process dies after enqueue, before the delete

    with pytest.raises(Crash):
        await SqsConsumer(producer, DiesBeforeDelete(), url, wait_s=0, visibility_s=1).poll_once()
    assert await producer.redis.zcard(QUEUE_NAME) == 1
    # SQS redelivers after the visibility timeout; the restarted consumer finds a duplicate
    consumer = SqsConsumer(producer, sqs, url, wait_s=2)
    while consumer.stats.messages == 0:
        await consumer.poll_once()
    assert consumer.stats.duplicates == 1 and consumer.stats.enqueued == 0
    assert await producer.redis.zcard(QUEUE_NAME) == 1
    assert _visible(sqs, url) == 0


async def test_sqs_consumer_keeps_messages_when_redis_is_down(
    sqs: Any, settings: Settings, buckets: Buckets
) -> None:
    url = _queue(sqs, f"down-{buckets.src}")
    sqs.send_message(QueueUrl=url, MessageBody=s3_event(buckets.src, "k.png"))
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    consumer = SqsConsumer(Producer(dead, settings), sqs, url, wait_s=0, visibility_s=30)
    assert await consumer.poll_once() == 1
    assert consumer.stats.errors == 1
    assert _visible(sqs, url) == 1  # not deleted: it comes back when Redis does
    await dead.aclose()
