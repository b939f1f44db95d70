"""`upscale` — the command line: enqueue, status, spend, pause/resume, retry, worker, run.

A failing command prints one line on stderr (`producers.errors`) and exits non-zero:
1 = the answer is no (unhealthy, no such job), 2 = a bad argument, 69 = a service did not answer,
78 = a setting or credential is wrong. `upscale --debug <command>` shows the traceback instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from producers.api import Producer
from producers.errors import EXIT_FAILED, CommandError, Group, describe
from worker.logs import configure_logging
from worker.settings import Settings, get_settings

T = TypeVar("T")
console = Console()
err_console = Console(stderr=True)


def _run(fn: Callable[[Producer], Awaitable[T]]) -> T:
    """Run `fn` with a Producer; Redis must answer within a few seconds (errors: see main)."""

    async def go() -> T:
        async with Producer.connect(get_settings(), fail_fast=True) as p:
            return await fn(p)

    return asyncio.run(go())


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _json_logs(as_json: bool) -> Settings:
    """Settings for a long-running command; `--json` makes its log lines JSON."""
    if as_json:
        os.environ["UPSCALE_LOG_FORMAT"] = "json"  # children (--processes) inherit it
        get_settings.cache_clear()
    return get_settings()


def _aws_from_dotenv(path: str = ".env") -> None:
    """`AWS_*` lines of `.env` (profile, region, keys) reach boto3 too; the environment wins.
    (Settings read `.env` themselves.)"""
    try:
        from dotenv import dotenv_values
    except ImportError:  # pragma: no cover - a dependency of pydantic-settings
        return
    if not os.path.isfile(path):
        return
    for k, v in dotenv_values(path).items():
        if k.startswith("AWS_") and v is not None:
            os.environ.setdefault(k, v)


JSON_HELP = "Print JSON (errors too: one JSON object on stderr)."


@click.group(
    cls=Group, help="Upscale images stored in S3 with the Ideogram Upscale model, at scale."
)
@click.version_option(package_name="upscale-queue", prog_name="upscale")
@click.option(
    "--debug", is_flag=True, envvar="UPSCALE_DEBUG", help="Show tracebacks instead of one line."
)
def main(debug: bool) -> None:
    _aws_from_dotenv()


# -- enqueue ----------------------------------------------------------------------------------
@main.command(help="Enqueue upscale jobs for one or more s3://bucket/key objects.")
@click.argument("sources", nargs=-1, required=True)
@click.option("--dest", help="Destination s3://bucket/key, or a prefix ending in '/'.")
@click.option(
    "--dest-template", help="Template, e.g. 's3://{bucket}-upscaled/{key_stem}@2x.{ext}'."
)
@click.option("--prompt", help="Optional prompt guiding the enhancement.")
@click.option("--resemblance", type=click.IntRange(1, 100))
@click.option("--detail", type=click.IntRange(1, 100))
@click.option("--magic-prompt", type=click.Choice(["AUTO", "ON", "OFF"]))
@click.option("--seed", type=click.IntRange(0, 2_147_483_647))
@click.option("--batch", help="Batch id (spend and progress are tracked per batch).")
@click.option("--lane", type=click.Choice(["live", "bulk"]), default="live", show_default=True)
@click.option("--version-id", help="Source object version (single source only).")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def enqueue(sources: tuple[str, ...], as_json: bool, **opts: Any) -> None:
    if len(sources) > 1 and (
        opts.get("version_id") or (opts.get("dest") and not opts["dest"].endswith("/"))
    ):
        raise click.UsageError("--version-id and a single --dest apply to one source only")

    async def go(p: Producer) -> list[dict[str, Any]]:
        from producers.api import build_spec

        specs = [build_spec(src, settings=p.settings, **opts) for src in sources]
        results = await p.enqueue_specs(specs)
        return [
            {
                "job_id": r.job_id,
                "outcome": r.outcome,
                "state": r.state,
                "source": s.source.uri,
                "dest": s.dest.uri,
            }
            for r, s in zip(results, specs, strict=True)
        ]

    rows = _run(go)
    if as_json:
        _echo_json(rows)
        return
    for row in rows:
        console.print(
            f"[bold]{row['job_id']}[/]  {row['outcome']:<9} {row['source']} -> {row['dest']}"
        )
    counts = Counter(r["outcome"] for r in rows)
    console.print(f"{len(rows)} job(s): " + ", ".join(f"{n} {k}" for k, n in counts.items()))


# -- backfill ---------------------------------------------------------------------------------
@main.command(help="Enqueue every matching object under s3://bucket/prefix (the bulk lane).")
@click.argument("source")
@click.option("--dest", help="Destination prefix (ending in '/') or template.")
@click.option(
    "--include", multiple=True, help="Glob on key or basename, e.g. '*.png' (repeatable)."
)
@click.option("--exclude", multiple=True, help="Glob to leave out (repeatable).")
@click.option("--min-size", type=int, default=1, show_default=True, help="Bytes.")
@click.option("--max-size", type=int, help="Bytes (default: the upstream's input cap).")
@click.option("--since", type=click.DateTime(), help="Only objects modified at/after (UTC).")
@click.option("--until", type=click.DateTime(), help="Only objects modified before (UTC).")
@click.option("--budget", type=float, help="Spend cap in USD for this backfill.")
@click.option(
    "--batch-callback", help="URL told (signed POST) once every job of the backfill is final."
)
@click.option("--batch", help="Batch id (default: derived from the source). Same id = resume.")
@click.option("--prompt")
@click.option("--resemblance", type=click.IntRange(1, 100))
@click.option("--detail", type=click.IntRange(1, 100))
@click.option("--max-queue", type=int, help="Back-pressure: keep at most this many jobs queued.")
@click.option("--restart", is_flag=True, help="Ignore the checkpoint and list from the start.")
@click.option(
    "--dry-run", is_flag=True, help="Count images and estimate the cost; enqueue nothing."
)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def backfill(source: str, as_json: bool, **o: Any) -> None:
    from datetime import UTC, datetime

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from producers.backfill import Backfill, BackfillPlan, BackfillStats, Filters, stats_dict
    from worker.storage import SourceMissing, Storage, make_s3_client

    if not source.startswith("s3://"):
        raise click.UsageError("SOURCE must be s3://bucket[/prefix]")
    settings = get_settings()

    def utc(d: datetime | None) -> datetime | None:
        return d.replace(tzinfo=UTC) if d else None

    batch = (
        o["batch"]
        or "backfill-"
        + "".join(c if c.isalnum() or c in "-._" else "-" for c in source[5:]).strip("-")[:80]
    )
    params = {k: o[k] for k in ("prompt", "resemblance", "detail") if o[k] is not None}
    plan = BackfillPlan(
        source=source,
        batch=batch,
        dest=o["dest"],
        filters=Filters(
            include=list(o["include"]),
            exclude=list(o["exclude"]),
            min_size=o["min_size"],
            max_size=o["max_size"] or settings.max_input_bytes,
            since=utc(o["since"]),
            until=utc(o["until"]),
        ),
        params=params,
        budget_usd=o["budget"],
        dry_run=o["dry_run"],
        max_queue=o["max_queue"],
        restart=o["restart"],
    )

    async def go(p: Producer) -> BackfillStats:
        # One quick request first: credentials, endpoint and bucket, before any progress bar.
        bucket = source[5:].split("/")[0]
        try:
            await Storage(settings, make_s3_client(settings, fail_fast=True)).head_bucket(bucket)
        except SourceMissing:
            where = settings.s3_endpoint_url or "AWS"
            raise CommandError(f"bucket {bucket} does not exist (S3 at {where})") from None
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=err_console,
            transient=as_json,
        ) as bar:
            task = bar.add_task("listing", total=None)

            def show(st: BackfillStats) -> None:
                rate = st.listed / st.elapsed if st.elapsed else 0
                bar.update(
                    task,
                    description=f"listed {st.listed:,}  matched {st.matched:,}  enqueued {st.enqueued:,}  dup {st.duplicates:,}  ({rate:,.0f} keys/s)",
                )

            if o["batch_callback"] and not plan.dry_run:
                await p.set_batch_callback(batch, o["batch_callback"])
            return await Backfill(p.redis, settings, make_s3_client(settings), plan, show).run()

    st = _run(go)
    d = stats_dict(st)
    d["batch"] = batch
    d["estimated_cost_usd"] = round(st.matched * settings.price_usd, 2)
    if as_json:
        _echo_json(d)
        return
    verb = "would enqueue" if plan.dry_run else "enqueued"
    console.print(
        f"{'[dry run] ' if plan.dry_run else ''}batch [bold]{batch}[/]: listed {st.listed:,} objects, "
        f"{st.matched:,} match ({st.bytes / 1e6:,.1f} MB); {verb} {st.matched if plan.dry_run else st.enqueued:,}"
        f"{'' if plan.dry_run else f', {st.duplicates:,} already queued/done'}; estimated cost ${d['estimated_cost_usd']:,.2f} "
        f"in {st.elapsed:.1f}s"
    )
    if st.skipped:
        console.print("  skipped: " + ", ".join(f"{n:,} {k}" for k, n in st.skipped.items()))
    if st.resumed_from:
        console.print(f"  resumed after checkpoint key {st.resumed_from!r}")
    if st.budget_stop:
        console.print(
            f"  stopped at the ${plan.budget_usd:,.2f} budget; re-run with a larger --budget to continue"
        )
    if not plan.dry_run:
        console.print(f"  follow it: upscale status --batch {batch}")


# -- status -----------------------------------------------------------------------------------
@main.command(help="Show a job, a batch, or (with no argument) the whole fleet.")
@click.argument("job_id", required=False)
@click.option("--batch", help="Show one batch's progress and spend.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.option("--watch", is_flag=True, help="Keep the view on screen, updating (Ctrl-C stops).")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between updates.")
def status(
    job_id: str | None, batch: str | None, as_json: bool, watch: bool, interval: float
) -> None:
    async def go(p: Producer) -> dict[str, Any]:
        if job_id:
            rec = await p.status(job_id)
            if rec is None:
                raise CommandError(f"no such job: {job_id}")
            return rec.model_dump()
        if batch:
            summary = await p.ledger.batch_summary(batch)
            if not summary["total"]:
                raise CommandError(f"no such batch: {batch}")
            return summary
        return await fleet_status(p)

    if watch and not job_id:
        return _watch(batch, interval)
    data = _run(go)
    if as_json:
        _echo_json(data)
    elif job_id:
        _print_record(data)
    elif batch:
        for line in _batch_lines(data):
            console.print(line)
    else:
        _print_fleet(data)


async def fleet_status(p: Producer) -> dict[str, Any]:
    return await p.fleet_status()


def _fmt_states(states: dict[str, int]) -> str:
    order = ["queued", "running", "waiting", "succeeded", "failed", "skipped"]
    return "  ".join(f"{k}={states.get(k, 0)}" for k in order if states.get(k, 0)) or "no jobs"


def _print_record(d: dict[str, Any]) -> None:
    t = Table(show_header=False, box=None)
    for k, v in d.items():
        if v in (None, "", [], {}):
            continue
        t.add_row(f"[dim]{k}[/]", str(v))
    console.print(t)


def _fleet_lines(d: dict[str, Any]) -> list[str]:
    lines = [f"jobs: {_fmt_states(d['states'])}   queue depth: {d['queue_depth']}"]
    for lane, v in d["lanes"].items():
        lines.append(
            f"  {lane:<4} depth {v['depth']:>7}  calls/min {v['calls_last_minute']:>5}  "
            f"oldest ready {v['oldest_age_s']:.0f}s"
        )
    pause = d.get("pause")
    if pause:
        lines.append(
            f"[bold red]PAUSED[/] reason={pause.get('reason')} {pause.get('detail', '')} "
            "- run `upscale resume` once fixed (e.g. after a top-up)"
        )
    else:
        lines.append("[green]running[/] (not paused)")
    lines.append(
        f"in flight: {d['inflight']}  calls last minute: {d['calls_last_minute']}  "
        f"circuit: {d['circuit']}  cooldown: {d['cooldown_s']:.1f}s"
    )
    sp = d["spend"]
    lines.append(f"spend: today ${sp['today_usd']:.2f}  total ${sp['total_usd']:.2f}")
    return lines


def _batch_lines(d: dict[str, Any]) -> list[str]:
    return [
        f"batch [bold]{d['batch']}[/]: {d['total']} job(s), spend ${d['spend_usd']:.2f}",
        "  " + _fmt_states(d["states"]),
    ]


def _print_fleet(d: dict[str, Any]) -> None:
    for line in _fleet_lines(d):
        console.print(line)


def _watch(batch: str | None, interval: float) -> None:
    """Redraw the fleet (or a batch) in place until Ctrl-C."""
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    async def go(p: Producer) -> None:
        with Live(console=console, auto_refresh=False) as live:
            while True:
                if batch:
                    lines = _batch_lines(await p.ledger.batch_summary(batch))
                else:
                    lines = _fleet_lines(await fleet_status(p))
                stamp = time.strftime("%H:%M:%S")
                live.update(
                    Group(*(Text.from_markup(x) for x in [f"[dim]{stamp}[/]", *lines])),
                    refresh=True,
                )
                await asyncio.sleep(interval)

    with contextlib.suppress(KeyboardInterrupt):
        _run(go)


@main.command(help="Show spend: total, today, and per batch.")
@click.option("--batch", multiple=True, help="Also show these batches.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def spend(batch: tuple[str, ...], as_json: bool) -> None:
    async def go(p: Producer) -> dict[str, Any]:
        out = await p.ledger.spend()
        out["batches"] = {b: (await p.ledger.batch_summary(b))["spend_usd"] for b in batch}
        return out

    d = _run(go)
    if as_json:
        _echo_json(d)
        return
    console.print(f"today ({d['day']}): ${d['today_usd']:.2f}   total: ${d['total_usd']:.2f}")
    for b, usd in d["batches"].items():
        console.print(f"  batch {b}: ${usd:.2f}")


# -- flow control -----------------------------------------------------------------------------
@main.command(help="Pause every worker: no new upstream call starts; jobs wait, nothing fails.")
@click.option("--detail", default="paused by an operator")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def pause(detail: str, as_json: bool) -> None:
    async def go(p: Producer) -> dict[str, Any] | None:
        current: dict[str, Any] | None = (await p.flow.snapshot()).get("pause")
        if not current:
            await p.flow.pause("manual", detail)
        return current

    already = _run(go)
    if as_json:
        _echo_json({"paused": True, "already": bool(already), "pause": already})
    elif already:
        console.print(
            f"already paused (reason={already.get('reason')} {already.get('detail', '')}); "
            "`upscale resume` lifts it"
        )
    else:
        console.print("paused: workers start no new upstream call; `upscale resume` lifts it")


@main.command(help="Lift a pause (after a top-up, a key fix, or a manual pause).")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def resume(as_json: bool) -> None:
    async def go(p: Producer) -> bool:
        return await p.flow.resume()

    was = _run(go)
    if as_json:
        _echo_json({"resumed": was, "was_paused": was})
    else:
        console.print("resumed: workers pick jobs again" if was else "was not paused")


@main.command(help="Re-enqueue failed jobs (attempts reset). Exits 1 if a job does not exist.")
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def retry(job_ids: tuple[str, ...], as_json: bool) -> None:
    async def go(p: Producer) -> list[dict[str, Any]]:
        out = []
        for j in job_ids:
            r = await p.retry(j)
            out.append({"job_id": j, "outcome": None if r is None else r.outcome})
        return out

    rows = _run(go)
    missing = [r["job_id"] for r in rows if r["outcome"] is None]
    if as_json:
        _echo_json(rows)
    else:
        for r in rows:
            if r["outcome"] is not None:
                console.print(f"{r['job_id']}: {r['outcome']}")
    if missing:
        raise CommandError(f"no such job: {', '.join(missing)}")


# -- processes --------------------------------------------------------------------------------
@main.command(help="Run a worker process (arq). Many can run, on many machines.")
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@click.option(
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Worker processes on this host (each serves both lanes; flow control stays global).",
)
@click.option(
    "--wait-for-redis",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds to wait for Redis at start-up (a restart in progress) before giving up.",
)
@click.option("--json", "as_json", is_flag=True, help="JSON log lines (and errors).")
def worker(burst: bool, processes: int, wait_for_redis: float, as_json: bool) -> None:
    settings = _json_logs(as_json)  # a bad setting stops here, before any process starts
    asyncio.run(_wait_for_redis(settings, wait_for_redis))
    from worker.app import main as worker_main

    if processes == 1:
        worker_main(burst=burst)
        return
    from producers.supervise import supervise

    argv = [sys.executable, "-m", "producers.cli", "worker", *(["--burst"] if burst else [])]
    sys.exit(supervise(argv, processes))


async def _wait_for_redis(settings: Settings, seconds: float) -> None:
    """Until Redis answers, quietly, for up to `seconds`; then `RedisUnavailable` (one line)."""
    from worker.redis_conn import RedisUnavailable, connect

    deadline = time.monotonic() + seconds
    while True:
        try:
            redis = await connect(settings, fail_fast=True)
        except RedisUnavailable as e:
            if e.auth or time.monotonic() + 1 > deadline:
                raise
            await asyncio.sleep(1)
        else:
            await redis.aclose()
            return


@main.command(help="Serve the status page, its JSON API and the fleet's /metrics.")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8090, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON log lines (and errors).")
def dashboard(host: str, port: int, as_json: bool) -> None:
    from producers.dashboard import serve

    settings = _json_logs(as_json)
    configure_logging(settings.log_format, settings.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, host, port))


@main.command(help="Check Redis, S3 and the upstream (URL, key, model); exit 1 if a check fails.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def health(as_json: bool) -> None:
    import httpx

    from worker.health import CHECK_TIMEOUT_S, Check, check_redis, check_s3, check_upstream
    from worker.logs import register_secret
    from worker.redis_conn import connect
    from worker.storage import Storage, make_s3_client
    from worker.upstream import make_upstream

    settings = get_settings()
    register_secret(settings.api_key_value)

    async def redis_check() -> Check:
        try:
            redis = await connect(settings, fail_fast=True)
        except Exception as e:
            return False, describe(e)
        try:
            return await check_redis(redis, describe)
        finally:
            await redis.aclose()

    async def go() -> dict[str, Check]:
        # All three at once, each with a short timeout: the answer comes within ~5 s.
        storage = Storage(settings, make_s3_client(settings, fail_fast=True))
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(CHECK_TIMEOUT_S, connect=2), follow_redirects=False
        )
        upstream = make_upstream(settings, client)
        try:
            checks = await asyncio.gather(
                redis_check(),
                check_s3(storage, settings.health_bucket, describe),
                check_upstream(upstream),
            )
        finally:
            await upstream.aclose()
        return dict(zip(("redis", "s3", "upstream"), checks, strict=True))

    results = asyncio.run(go())
    failed = {name: detail for name, (good, detail) in results.items() if not good}
    if as_json:
        click.echo(json.dumps({k: {"ok": v[0], "detail": v[1]} for k, v in results.items()}))
    else:
        for name, (good, detail) in results.items():
            console.print(f"{'[green]ok  [/]' if good else '[red]FAIL[/]'} {name:<9} {detail}")
        console.print("healthy" if not failed else "[bold red]unhealthy[/]")
    if failed:
        raise CommandError(
            "unhealthy: " + "; ".join(f"{k}: {v}" for k, v in failed.items()), EXIT_FAILED
        )


@main.command(help="Serve bucket notifications and HTTP enqueue (needs UPSCALE_API_TOKEN).")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8080, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON log lines (and errors).")
def webhook(host: str, port: int, as_json: bool) -> None:
    from producers.webhook import serve

    s = _json_logs(as_json)
    configure_logging(s.log_format, s.log_level)
    asyncio.run(serve(s, host, port))


@main.command(help="Consume S3 notifications from an SQS queue.")
@click.option("--queue-url", required=True)
@click.option(
    "--dlq-url", help="Dead-letter queue for malformed messages (else Redis uq:dead-letters)."
)
@click.option("--endpoint-url", help="SQS endpoint (default: AWS).")
@click.option("--wait", default=20, show_default=True, help="Long-poll seconds.")
@click.option("--until-empty", is_flag=True, help="Exit when a poll returns nothing.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP + " Log lines are JSON too.")
def sqs(
    queue_url: str,
    dlq_url: str | None,
    endpoint_url: str | None,
    wait: int,
    until_empty: bool,
    as_json: bool,
) -> None:
    import dataclasses

    import boto3

    from producers.sqs import SqsConsumer

    s = _json_logs(as_json)
    configure_logging(s.log_format, s.log_level)
    # The region as for S3: UPSCALE_S3_REGION, AWS_REGION, then boto3's chain (the profile).
    region = s.s3_region or os.environ.get("AWS_REGION")
    client = boto3.client("sqs", region_name=region, endpoint_url=endpoint_url)

    async def go(p: Producer) -> Any:
        return await SqsConsumer(p, client, queue_url, dlq_url=dlq_url, wait_s=wait).run(
            until_empty=until_empty
        )

    st = _run(go)
    if as_json:
        _echo_json(dataclasses.asdict(st))
        return
    console.print(
        f"sqs: {st.messages} message(s), {st.enqueued} job(s) enqueued, {st.duplicates} duplicate(s), "
        f"{st.ignored} ignored, {st.dead_lettered} dead-lettered, {st.errors} redelivered"
    )


@main.command(help="The main job on the embedded local stack: sample images in, 2x images out.")
@click.option("--images", default=6, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON log lines (and errors).")
def run(images: int, as_json: bool) -> None:
    _json_logs(as_json)
    from infra.run import main as run_main

    sys.exit(run_main(images=images))


if __name__ == "__main__":
    main()
