"""Backfill end to end on real S3: resuming from its checkpoint without enqueuing (or paying)
anything twice, and the CLI's dry run."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from infra.stack import LocalStack
from producers.api import Producer
from producers.backfill import Backfill, BackfillPlan, BackfillStats, Filters, checkpoint_key
from producers.cli import main as cli
from tests.integration.conftest import Buckets, job_ids, put
from tests.support import png
from worker.contract import BULK_QUEUE_NAME, S3Object, job_id_for
from worker.settings import Settings
from worker.storage import make_s3_client


def _fill(stack: LocalStack, bucket: str, n: int) -> None:
    data = png(8, 8)
    for i in range(n):
        put(stack, bucket, f"set/img {i:03d}.png", data)
    put(stack, bucket, "set/notes.txt", b"not an image")
    put(stack, bucket, "set/zz-empty.png", b"")


async def test_backfill_resumes_from_checkpoint(
    stack: LocalStack, producer: Producer, settings: Settings, buckets: Buckets
) -> None:
    _fill(stack, buckets.src, 25)
    s3 = make_s3_client(settings.s3)
    plan = BackfillPlan(
        source=f"s3://{buckets.src}/set/",
        batch="bf",
        filters=Filters(include=["*.png"]),
        chunk=10,
    )

    class Interrupted(Exception):
        pass

    def stop_after_first_chunk(st: BackfillStats) -> None:
        if st.enqueued >= 10:
            raise Interrupted

    with pytest.raises(Interrupted):
        await Backfill(producer.redis, settings, s3, plan, stop_after_first_chunk).run()
    assert await producer.redis.zcard(BULK_QUEUE_NAME) == 10
    stats = await Backfill(producer.redis, settings, s3, plan).run()
    assert stats.resumed_from.startswith("set/img 00")
    assert stats.enqueued == 15 and stats.duplicates == 0
    assert stats.skipped == {"filtered": 1, "size": 1}
    assert await producer.redis.zcard(BULK_QUEUE_NAME) == 25
    ck = await producer.redis.hgetall(checkpoint_key("bf"))  # type: ignore[misc]  # redis-py's async stubs
    assert ck[b"done"] == b"1"
    summary = await producer.ledger.batch_summary("bf")
    assert summary["total"] == 25
    rec = await producer.status(job_id_for_key(settings, buckets.src, "set/img 000.png", s3))
    assert rec is not None and rec.lane == "bulk"
    # a full re-run from scratch only finds duplicates: nothing is enqueued (or paid) twice
    again = await Backfill(
        producer.redis, settings, s3, BackfillPlan(**{**plan.__dict__, "restart": True})
    ).run()
    assert again.enqueued == 0 and again.duplicates == 25


def job_id_for_key(settings: Settings, bucket: str, key: str, s3: Any) -> str:
    from producers.api import build_spec

    etag = s3.head_object(Bucket=bucket, Key=key)["ETag"]
    spec = build_spec(
        S3Object(bucket=bucket, key=key, etag=etag), batch="bf", lane="bulk", settings=settings
    )
    return job_id_for(spec)


def test_backfill_dry_run_cli_prints_count_and_cost(
    stack: LocalStack, stack_env: None, buckets: Buckets
) -> None:
    _fill(stack, buckets.src, 7)
    r = CliRunner().invoke(
        cli, ["backfill", f"s3://{buckets.src}/set/", "--include", "*.png", "--dry-run", "--json"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{") :])
    assert out["matched"] == 7 and out["enqueued"] == 0
    assert out["estimated_cost_usd"] == pytest.approx(7 * 0.06)


async def test_bucket_root_with_trailing_slash_and_parallel_prefixes(
    stack: LocalStack, producer: Producer, settings: Settings, buckets: Buckets
) -> None:
    """`s3://bucket/` lists the whole bucket; several common prefixes are listed at once yet
    handled in key order, so a run stopped anywhere resumes without skipping a key."""
    data = png(8, 8)
    keys = [f"{d}/k{i}.png" for d in ("a", "b", "b.x", "c") for i in range(6)] + ["top.png"]
    for k in keys:
        put(stack, buckets.src, k, data)
    s3 = make_s3_client(settings.s3)
    plan = BackfillPlan(source=f"s3://{buckets.src}/", batch="root", chunk=4, parallel=3)

    class Interrupted(Exception):
        pass

    def stop(st: BackfillStats) -> None:
        if st.enqueued >= 8:
            raise Interrupted

    with pytest.raises(Interrupted):
        await Backfill(producer.redis, settings, s3, plan, stop).run()
    st = await Backfill(producer.redis, settings, s3, plan).run()
    assert st.resumed_from and st.enqueued == len(keys) - 8 and st.duplicates == 0
    assert await producer.redis.zcard(BULK_QUEUE_NAME) == len(keys)
    # the same with no trailing slash, from scratch: all duplicates
    again = await Backfill(
        producer.redis,
        settings,
        s3,
        BackfillPlan(source=f"s3://{buckets.src}", batch="root2", restart=True),
    ).run()
    assert again.duplicates == len(keys) and again.enqueued == 0


async def test_skip_existing_outputs_by_listing_the_destination(
    stack: LocalStack, producer: Producer, settings: Settings, buckets: Buckets
) -> None:
    data = png(8, 8)
    for k in ("s/a.png", "s/a0.png", "s/b.jpg", "s/c.png"):
        put(stack, buckets.src, k, data)
    put(stack, buckets.dest, "s/a@2x.png", data)  # a's output exists
    put(stack, buckets.dest, "s/b@2x.png", data)  # b's under another extension: unknown
    s3 = make_s3_client(settings.s3)
    st = await Backfill(
        producer.redis, settings, s3, BackfillPlan(source=f"s3://{buckets.src}/s/", batch="sk")
    ).run()
    assert st.existing == 1 and st.skipped == {"output exists": 1}
    assert st.enqueued == 3 and st.dest_listed == 2  # a0 and c: no output with their stem
    listed = {}
    for j in await job_ids(producer.redis):
        rec = await producer.status(j)
        assert rec is not None
        listed[rec.source.rsplit("/", 1)[-1]] = bool((rec.payload or {}).get("dest_listed"))
    assert listed == {"a0.png": True, "b.jpg": False, "c.png": True}
    off = await Backfill(
        producer.redis,
        settings,
        s3,
        BackfillPlan(source=f"s3://{buckets.src}/s/", batch="sk2", skip_existing=False),
    ).run()
    assert off.existing == 0 and off.enqueued == 1 and off.duplicates == 3


def test_spec_maker_makes_what_build_spec_makes(settings: Settings) -> None:
    """The backfill's jobs are made on plain strings: id and record exactly build_spec's."""
    from producers.api import build_spec
    from producers.backfill_plan import SpecMaker
    from producers.listing import ObjectEntry
    from worker.api import ledger_fields

    keys = ["p/dir/a b.JPG", "root.png", "p/no-ext", "p/ünï cödé/ç.webp", 'p/q"uote.v1/x']
    dests = (None, "s3://out-bucket/2x/", "s3://out-bucket/{dirname}/{key_stem}.webp")
    for dest in dests:
        for params in ({"prompt": "p"}, {}, {"resemblance": 70, "seed": 3}):
            plan = BackfillPlan(source="s3://b-src/p/", batch="x", dest=dest, params=params)
            maker = SpecMaker(settings, plan)
            for key in keys:
                for etag, version in (('"abc"', "v"), (None, None), ("e", None)):
                    e = ObjectEntry(bucket="b-src", key=key, etag=etag, version_id=version)
                    for listed in (False, True):
                        job = maker.job(e, maker.dest(e), listed)
                        slow = build_spec(
                            S3Object(bucket="b-src", key=key, etag=etag, version_id=version),
                            dest=dest,
                            batch="x",
                            lane="bulk",
                            settings=settings,
                            **params,
                        ).model_copy(update={"dest_listed": listed})
                        assert job.job_id == slow.job_id
                        assert (job.lane, job.batch) == ("bulk", "x")
                        assert job.fields == ledger_fields(slow)
    bad = SpecMaker(settings, BackfillPlan(source="s3://b-src/", batch="x", dest="s3://b-src/"))
    with pytest.raises(ValueError, match="overwrite the source"):
        bad.dest(ObjectEntry(bucket="b-src", key="a.png"))
    with pytest.raises(ValueError, match="bucket"):
        bad.dest(ObjectEntry(bucket="B_ad", key="a.png"))
