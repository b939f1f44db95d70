"""`upscale report`: a batch's completion report, written to S3 on demand (workers write one
on their own when a batch ends)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import click

from producers.api import Producer
from producers.cli.common import JSON_HELP, console, echo_json, err_console, main, with_producer
from producers.errors import CommandError

if TYPE_CHECKING:
    from worker.api import ReportResult


@main.command(
    help="Write a batch's completion report to S3: manifest.json and gzipped CSV parts, "
    "one row per object (as S3 Batch Operations reports). Exits 1 if there is no such batch."
)
@click.option("--batch", required=True, help="The batch to report on.")
@click.option("--failed-only", is_flag=True, help="Only the rows whose state is not succeeded.")
@click.option(
    "--to", help="s3://bucket/prefix/ for this report (default: the batch's report folder)."
)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def report(batch: str, failed_only: bool, to: str | None, as_json: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from worker.api import NoSuchBatch, NothingToReport

    if to is not None and not (to.startswith("s3://") and to[5:].split("/")[0]):
        raise click.BadParameter("must be s3://bucket/prefix/", param_hint="--to")

    async def go(p: Producer) -> ReportResult:
        with Progress(
            "{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        ) as bar:
            task = bar.add_task(f"report {batch}", total=None)

            def show(read: int, total: int) -> None:
                bar.update(task, completed=read, total=total)

            try:
                return await p.report(batch, failed_only=failed_only, to=to, progress=show)
            except (NoSuchBatch, NothingToReport) as e:
                raise CommandError(str(e)) from None

    r = with_producer(go)
    if as_json:
        echo_json({**asdict(r), "row_count": r.row_count})
        return
    console.print(summary(r), soft_wrap=True)  # a location is copied whole, never wrapped


def summary(r: ReportResult) -> str:
    """A few readable lines: what the report holds, where it is, what happens to the records."""
    states = ", ".join(f"{n:,} {s}" for s, n in r.rows.items()) or "no rows"
    spend = f"${r.cost_usd}" + (
        f" (+${r.possible_cost_usd} possibly billed)" if r.possible_cost_usd != "0.000000" else ""
    )
    scope = " (failed only)" if r.scope == "FailedTasksOnly" else ""
    lines = [
        f"batch [bold]{r.batch}[/]{scope}: {r.row_count:,} rows ({states}), cost {spend}",
        f"  report: {r.manifest} ({len(r.parts)} part(s))",
    ]
    if r.skipped_records:
        lines.append(f"  {r.skipped_records:,} record(s) left out: expired, or running again")
    lines.append("  " + _records(r))
    return "\n".join(lines)


def _records(r: ReportResult) -> str:
    if r.expiring is not None and r.retention_s is not None:
        kept = r.row_count - r.expiring
        held = f"; {kept:,} hold money and are kept" if kept else ""
        return f"records expire in {_duration(r.retention_s)}{held}"
    if not r.ended:
        return "the batch is still running: its records stay until it ends and is reported"
    return "records stay: a full report (without --failed-only) starts their retention"


def _duration(s: int) -> str:
    for unit, n in (("d", 86_400), ("h", 3600), ("m", 60)):
        if s >= n and s % n == 0:
            return f"{s // n}{unit}"
    return f"{s}s"
