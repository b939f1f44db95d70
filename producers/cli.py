"""`upscale` — the command line: enqueue, status, spend, pause/resume, retry, worker, run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from producers.api import Producer
from worker.logs import configure_logging
from worker.settings import get_settings

T = TypeVar("T")
console = Console()
err_console = Console(stderr=True)


def _run(fn: Callable[[Producer], Awaitable[T]]) -> T:
    async def go() -> T:
        async with Producer.connect(get_settings()) as p:
            return await fn(p)

    try:
        return asyncio.run(go())
    except (ValueError, ValidationError) as e:
        raise click.UsageError(str(e)) from None
    except OSError as e:  # Redis unreachable
        raise click.ClickException(f"cannot reach Redis at {_redis_hint()}: {e}") from None


def _redis_hint() -> str:
    url = get_settings().redis_url
    return url.split("@")[-1]  # never print a password


@click.group(help="Upscale images stored in S3 with the Ideogram Upscale model, at scale.")
def main() -> None:
    pass


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
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
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
        click.echo(json.dumps(rows, indent=2))
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
@click.option("--json", "as_json", is_flag=True)
def backfill(source: str, as_json: bool, **o: Any) -> None:
    from datetime import UTC, datetime

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from producers.backfill import Backfill, BackfillPlan, BackfillStats, Filters, stats_dict
    from worker.storage import make_s3_client

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
        click.echo(json.dumps(d, indent=2))
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
@click.option("--json", "as_json", is_flag=True)
@click.option("--watch", is_flag=True, help="Keep the view on screen, updating (Ctrl-C stops).")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between updates.")
def status(
    job_id: str | None, batch: str | None, as_json: bool, watch: bool, interval: float
) -> None:
    async def go(p: Producer) -> dict[str, Any]:
        if job_id:
            rec = await p.status(job_id)
            if rec is None:
                raise click.ClickException(f"no such job: {job_id}")
            return rec.model_dump()
        if batch:
            return await p.ledger.batch_summary(batch)
        return await fleet_status(p)

    if watch and not job_id:
        return _watch(batch, interval)
    data = _run(go)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
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
@click.option("--json", "as_json", is_flag=True)
def spend(batch: tuple[str, ...], as_json: bool) -> None:
    async def go(p: Producer) -> dict[str, Any]:
        out = await p.ledger.spend()
        out["batches"] = {b: (await p.ledger.batch_summary(b))["spend_usd"] for b in batch}
        return out

    d = _run(go)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    console.print(f"today ({d['day']}): ${d['today_usd']:.2f}   total: ${d['total_usd']:.2f}")
    for b, usd in d["batches"].items():
        console.print(f"  batch {b}: ${usd:.2f}")


# -- flow control -----------------------------------------------------------------------------
@main.command(help="Pause every worker: no new upstream call starts; jobs wait, nothing fails.")
@click.option("--detail", default="paused by an operator")
def pause(detail: str) -> None:
    async def go(p: Producer) -> None:
        await p.flow.pause("manual", detail)

    _run(go)
    console.print("paused: workers start no new upstream call; `upscale resume` lifts it")


@main.command(help="Lift a pause (after a top-up, a key fix, or a manual pause).")
def resume() -> None:
    async def go(p: Producer) -> bool:
        return await p.flow.resume()

    was = _run(go)
    console.print("resumed: workers pick jobs again" if was else "was not paused")


@main.command(help="Re-enqueue failed jobs (attempts reset).")
@click.argument("job_ids", nargs=-1, required=True)
def retry(job_ids: tuple[str, ...]) -> None:
    async def go(p: Producer) -> list[str]:
        out = []
        for j in job_ids:
            r = await p.retry(j)
            out.append(f"{j}: {'no such job' if r is None else r.outcome}")
        return out

    for line in _run(go):
        console.print(line)


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
def worker(burst: bool, processes: int) -> None:
    from worker.app import main as worker_main

    if processes == 1:
        worker_main(burst=burst)
        return
    from producers.supervise import supervise

    argv = [sys.executable, "-m", "producers.cli", "worker", *(["--burst"] if burst else [])]
    sys.exit(supervise(argv, processes))


@main.command(help="Serve the status page, its JSON API and the fleet's /metrics.")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8090, show_default=True)
def dashboard(host: str, port: int) -> None:
    from producers.dashboard import serve

    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, host, port))


@main.command(help="Check Redis, S3 and the upstream key; exit 1 if any check fails.")
@click.option("--json", "as_json", is_flag=True)
def health(as_json: bool) -> None:
    from worker.health import run_checks
    from worker.redis_conn import connect
    from worker.runtime import create_runtime

    settings = get_settings()

    async def go() -> dict[str, tuple[bool, str]]:
        try:
            redis = await asyncio.wait_for(connect(settings), 10)
        except Exception as e:
            return {"redis": (False, f"{type(e).__name__}: {e}")}
        rt = create_runtime(settings, redis)
        try:
            return await run_checks(rt)
        finally:
            await rt.aclose()
            await redis.aclose()

    results = asyncio.run(go())
    ok = all(r[0] for r in results.values())
    if as_json:
        click.echo(json.dumps({k: {"ok": v[0], "detail": v[1]} for k, v in results.items()}))
    else:
        for name, (good, detail) in results.items():
            console.print(f"{'[green]ok  [/]' if good else '[red]FAIL[/]'} {name:<9} {detail}")
        console.print("healthy" if ok else "[bold red]unhealthy[/]")
    sys.exit(0 if ok else 1)


@main.command(help="Serve bucket notifications and HTTP enqueue (needs UPSCALE_API_TOKEN).")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8080, show_default=True)
def webhook(host: str, port: int) -> None:
    from producers.webhook import serve
    from worker.logs import configure_logging

    s = get_settings()
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
def sqs(
    queue_url: str, dlq_url: str | None, endpoint_url: str | None, wait: int, until_empty: bool
) -> None:
    import boto3

    from producers.sqs import SqsConsumer
    from worker.logs import configure_logging

    s = get_settings()
    configure_logging(s.log_format, s.log_level)
    client = boto3.client("sqs", region_name=s.s3_region, endpoint_url=endpoint_url)

    async def go(p: Producer) -> Any:
        return await SqsConsumer(p, client, queue_url, dlq_url=dlq_url, wait_s=wait).run(
            until_empty=until_empty
        )

    st = _run(go)
    console.print(
        f"sqs: {st.messages} message(s), {st.enqueued} job(s) enqueued, {st.duplicates} duplicate(s), "
        f"{st.ignored} ignored, {st.dead_lettered} dead-lettered, {st.errors} redelivered"
    )


@main.command(help="The main job on the embedded local stack: sample images in, 2x images out.")
@click.option("--images", default=6, show_default=True)
def run(images: int) -> None:
    from infra.run import main as run_main

    sys.exit(run_main(images=images))


if __name__ == "__main__":
    main()
