"""The whole job (`worker.job.pipeline.run_job`) with the fake runtime: one call and one
stored output; nothing paid twice when a run resumes; an output already there costs no call;
and the pipeline stays one short function a newcomer reads top to bottom."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest
from arq import Retry
from redis.asyncio import Redis

from tests.unit.job_fakes import DEST, FakeUpstream, client_error, fakes, png
from worker.contract import META_JOB_ID, JobState
from worker.job import buy, run_job
from worker.job.admit import Slot
from worker.job.pipeline import __doc__ as pipeline_doc
from worker.job.run import Job, Run
from worker.job.source import Source
from worker.ledger import PaidResult


async def test_one_call_one_stored_output_and_a_final_job_is_not_run_again(r: Redis) -> None:
    async with fakes(r) as f:
        job = await f.job()
        reply = await run_job(f.rt, job.spec, job.id)
        assert reply["state"] == JobState.SUCCEEDED and reply["dest"] == DEST.uri
        assert len(f.upstream.sent) == 1 and f.s3.get(DEST) is not None
        assert f.rt.runs == {}
        again = await run_job(f.rt, job.spec, job.id)
        assert again == {"state": JobState.SUCCEEDED, "note": "already final"}
        assert len(f.upstream.sent) == 1


async def test_a_paid_result_is_stored_by_the_next_run_without_a_new_call(r: Redis) -> None:
    async with fakes(r) as f:
        job = await f.job()
        f.s3.fail["put_object"] = client_error("SlowDown", 503)  # S3 away while storing
        with pytest.raises(Retry):  # waits: no attempt used
            await run_job(f.rt, job.spec, job.id)
        assert await f.field(job, "wait_reason") == "storage"
        reply = await run_job(f.rt, job.spec, job.id)
        assert reply["state"] == JobState.SUCCEEDED
        assert len(f.upstream.sent) == 1  # paid once
        rec = await f.ledger.get(job.id)
        assert rec is not None and rec.billed_calls == 1


async def test_an_output_already_there_costs_no_call(r: Redis) -> None:
    async with fakes(r) as f:
        job = await f.job()
        f.s3.put(DEST, png(), metadata={META_JOB_ID: job.id})
        reply = await run_job(f.rt, job.spec, job.id)
        assert reply == {"state": JobState.SKIPPED, "dest": DEST.uri}
        assert f.upstream.sent == []


async def test_a_source_that_cannot_succeed_fails_before_any_call(r: Redis) -> None:
    async with fakes(r) as f:
        f.s3.fail["get_object"] = client_error("AccessDenied", 403)
        job = await f.job()
        reply = await run_job(f.rt, job.spec, job.id)
        assert reply["state"] == JobState.FAILED and f.upstream.sent == []
        assert await f.field(job, "error_class") == "SourceAccessDenied"


class Recording:
    """A route that makes its calls as the default one does, and says it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def buy(self, job: Job, slot: Slot, source: Source) -> PaidResult:
        self.asked.append("buy")
        return await buy.SEND_THEN_POLL.buy(job, slot, source)

    async def resume(self, job: Job, run: Run) -> PaidResult | None:
        self.asked.append("resume")
        return await buy.SEND_THEN_POLL.resume(job, run)


async def test_the_slots_route_decides_how_its_call_is_made(
    r: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    route = Recording()
    monkeypatch.setitem(buy.ROUTES, "ideogram", route)
    async with fakes(r, FakeUpstream(needs_bytes=True), route="ideogram") as f:
        job = await f.job()
        assert (await run_job(f.rt, job.spec, job.id))["state"] == JobState.SUCCEEDED
        assert route.asked == ["resume", "buy"]
        assert f.upstream.sent[0][0].data == png()  # the direct route takes the bytes


def test_the_pipeline_is_one_short_function_that_names_its_modules() -> None:
    lines = inspect.getsource(run_job).splitlines()
    assert len(lines) <= 30
    steps = ["start(", "already_stored(", "admit(", "read(", "buy.buy(", "await store(", "settle("]
    body = "\n".join(lines)
    assert [body.index(s) for s in steps] == sorted(body.index(s) for s in steps)
    # the modules a reader crosses, listed in the pipeline's docstring: at most 15, all real
    modules = re.findall(r"^ *\d+\. `([\w.]+)`", pipeline_doc or "", re.MULTILINE)
    assert 8 <= len(modules) <= 15
    for name in modules:
        importlib.import_module(name)
