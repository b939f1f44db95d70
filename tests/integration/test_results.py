"""A refused result download fails the job without a second payment and is stored by a retry
once the setting is fixed. The download rules themselves are `tests/unit/test_results.py`."""

from __future__ import annotations

from infra.stack import LocalStack
from producers.api import Producer
from tests.integration.conftest import Buckets, Sim, drain, put, wait_state
from tests.support import png
from worker.settings import Settings


async def test_refused_result_is_kept_and_stored_by_a_retry_without_paying_again(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    put(stack, buckets.src, "a.png", png(16, 16))
    job_id = (await producer.enqueue(f"s3://{buckets.src}/a.png")).job_id
    await drain(settings.model_copy(update={"result_hosts": ["cdn.example.com"]}))
    rec = await wait_state(producer, job_id, "failed")
    assert rec.error_class == "ResultRejected" and "UPSCALE_RESULT_HOSTS" in (rec.error or "")
    assert rec.billed_calls == 1 and rec.attempts == 0
    assert "sig=" not in (rec.error or "")
    await producer.retry(job_id)  # after fixing the setting
    await drain(settings)
    rec = await wait_state(producer, job_id, "succeeded")
    assert rec.billed_calls == 1 and sim.stats()["billed_calls"] == 1
