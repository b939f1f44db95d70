"""Job commands: `enqueue`, `backfill` (`retry` and `cancel`: `producers.cli.control`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import click

from producers.api import Producer, SourceNotFound, build_spec
from producers.cli.common import JSON_HELP, console, echo_json, err_console, main, with_producer
from producers.errors import CommandError
from worker.api import EnqueueOutcome, JobState, get_settings


@dataclass(frozen=True)
class Enqueued:
    """One source as `enqueue` reports it (`--json`: a list of these)."""

    job_id: str
    outcome: EnqueueOutcome
    state: JobState
    source: str
    dest: str


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

    async def go(p: Producer) -> list[Enqueued]:
        specs = [build_spec(src, settings=p.settings, **opts) for src in sources]
        try:  # each source's ETag is read (one HEAD each): a replaced object is a new job
            results = await p.enqueue_specs(specs)
        except SourceNotFound as e:  # nothing was enqueued
            raise CommandError(str(e)) from None
        return [
            Enqueued(r.job_id, r.outcome, r.state, s.source.uri, s.dest.uri)
            for r, s in zip(results, specs, strict=True)
        ]

    rows = with_producer(go)
    if as_json:
        echo_json([asdict(row) for row in rows])
        return
    for row in rows:
        console.print(f"[bold]{row.job_id}[/]  {row.outcome:<9} {row.source} -> {row.dest}")
    counts = Counter(r.outcome for r in rows)
    console.print(f"{len(rows)} job(s): " + ", ".join(f"{n} {k}" for k, n in counts.items()))


# -- backfill ---------------------------------------------------------------------------------
@main.command(
    help="Enqueue every matching object under s3://bucket[/prefix], or every row of "
    "--manifest (an S3 Inventory manifest.json, or a bucket,key[,version] CSV), into the bulk lane."
)
@click.argument("source", required=False)
@click.option(
    "--manifest",
    help="s3://…/manifest.json (S3 Inventory: CSV, ORC, Parquet) or s3://…/list.csv[.gz].",
)
@click.option("--versions", is_flag=True, help="Manifest: non-latest versions too.")
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
@click.option(
    "--skip-existing/--no-skip-existing",
    default=True,
    show_default=True,
    help="List the destination and skip objects whose output is there (1 request per 1,000 "
    "keys, no HEAD per job); --no-skip-existing to redo them (e.g. with a new --prompt).",
)
@click.option("--restart", is_flag=True, help="Ignore the checkpoint and start from the top.")
@click.option(
    "--dry-run", is_flag=True, help="Count images and estimate the cost; enqueue nothing."
)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def backfill(source: str | None, as_json: bool, **o: Any) -> None:
    from datetime import UTC, datetime

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from producers.backfill import (
        Backfill,
        BackfillPlan,
        BackfillStats,
        Filters,
        stats_dict,
    )
    from producers.backfill_plan import split_source
    from producers.manifest import split_uri
    from worker.api import SourceMissing, check_bucket, make_s3_client

    if bool(source) == bool(o["manifest"]):
        raise click.UsageError("give SOURCE (s3://bucket[/prefix]) or --manifest s3://…, not both")
    try:
        bucket = split_uri(o["manifest"])[0] if o["manifest"] else split_source(source or "")[0]
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    origin = o["manifest"] or source or ""
    settings = get_settings()

    def utc(d: datetime | None) -> datetime | None:
        return d.replace(tzinfo=UTC) if d else None

    batch = (
        o["batch"]
        or "backfill-"
        + "".join(c if c.isalnum() or c in "-._" else "-" for c in origin[5:]).strip("-")[:80]
    )
    params = {k: o[k] for k in ("prompt", "resemblance", "detail") if o[k] is not None}
    plan = BackfillPlan(
        source=origin,
        batch=batch,
        dest=o["dest"],
        filters=Filters(
            include=list(o["include"]),
            exclude=list(o["exclude"]),
            min_size=o["min_size"],
            max_size=o["max_size"] or settings.jobs.max_input_bytes,
            since=utc(o["since"]),
            until=utc(o["until"]),
        ),
        params=params,
        budget_usd=o["budget"],
        dry_run=o["dry_run"],
        max_queue=o["max_queue"],
        restart=o["restart"],
        manifest=bool(o["manifest"]),
        versions=o["versions"],
        skip_existing=o["skip_existing"],
    )

    async def go(p: Producer) -> BackfillStats:
        # One quick request first: credentials, endpoint and bucket, before any progress bar.
        try:
            await check_bucket(settings.s3, bucket)
        except SourceMissing:
            where = settings.s3.endpoint_url or "AWS"
            raise CommandError(f"bucket {bucket} does not exist (S3 at {where})") from None
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=err_console,
            transient=as_json,
        ) as bar:
            task = bar.add_task("reading the manifest" if plan.manifest else "listing", total=None)

            def show(st: BackfillStats) -> None:
                rate = st.listed / st.elapsed if st.elapsed else 0
                bar.update(
                    task,
                    description=f"read {st.listed:,}  matched {st.matched:,}  enqueued {st.enqueued:,}  dup {st.duplicates:,}  ({rate:,.0f} keys/s)",
                )

            if o["batch_callback"] and not plan.dry_run:
                await p.set_batch_callback(batch, o["batch_callback"])
            return await Backfill(p.redis, settings, make_s3_client(settings.s3), plan, show).run()

    st = with_producer(go)
    d = stats_dict(st)
    d["batch"] = batch
    d["estimated_cost_usd"] = round(st.matched * settings.upstream.price_usd, 2)
    if as_json:
        echo_json(d)
        return
    verb = "would enqueue" if plan.dry_run else "enqueued"
    what = "rows" if plan.manifest else "objects"
    console.print(
        f"{'[dry run] ' if plan.dry_run else ''}batch [bold]{batch}[/]: read {st.listed:,} {what}, "
        f"{st.matched:,} match ({st.bytes / 1e6:,.1f} MB); {verb} {st.matched if plan.dry_run else st.enqueued:,}"
        f"{'' if plan.dry_run else f', {st.duplicates:,} already queued/done'}; estimated cost ${d['estimated_cost_usd']:,.2f} "
        f"in {st.elapsed:.1f}s"
    )
    if st.skipped:
        console.print("  skipped: " + ", ".join(f"{n:,} {k}" for k, n in st.skipped.items()))
    if st.existing:
        console.print(
            f"  {st.existing:,} already have an output at the destination "
            "(--no-skip-existing to redo them)"
        )
    if st.resumed_from:
        console.print(f"  resumed after checkpoint {st.resumed_from!r}")
    if st.budget_stop:
        console.print(
            f"  stopped at the ${plan.budget_usd:,.2f} budget; re-run with a larger --budget to continue"
        )
    if not plan.dry_run:
        console.print(f"  follow it: upscale status --batch {batch}")
