"""Stopping and re-running work: `cancel` (jobs, or a whole batch) and `retry` (jobs, or a
batch's failed / cancelled subset)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import click

from producers.api import Producer, RetryState
from producers.cli.common import JSON_HELP, console, echo_json, err_console, main, with_producer
from producers.errors import CommandError
from worker.api import CancelOutcome, CancelSummary, EnqueueOutcome

CANCEL_WORDS: dict[CancelOutcome, str] = {
    "cancelled": "cancelled",
    "after_call": "cancelled after its paid call is stored",
    "final": "already final",
    "missing": "no such job",
}


@dataclass(frozen=True)
class Retried:
    """One job as `retry` reports it (`outcome` None: no such job)."""

    job_id: str
    outcome: EnqueueOutcome | None


@main.command(
    help="Cancel jobs, or every job of a batch not yet final (--batch; new jobs into it are "
    "refused and a running backfill stops). No call is made for a cancelled job after this "
    "returns; a call already in flight is stored (it was paid), then the job ends cancelled."
)
@click.argument("job_ids", nargs=-1)
@click.option("--batch", help="Cancel this whole batch.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def cancel(job_ids: tuple[str, ...], batch: str | None, as_json: bool) -> None:
    if bool(job_ids) == bool(batch):
        raise click.UsageError("give job ids or --batch B (not both)")
    if batch:
        _cancel_batch(batch, as_json)
        return
    outcomes = with_producer(lambda p: p.cancel(job_ids))
    rows = [{"job_id": j, "outcome": o} for j, o in zip(job_ids, outcomes, strict=True)]
    if as_json:
        echo_json(rows)
    else:
        for j, o in zip(job_ids, outcomes, strict=True):
            console.print(f"{j}: {CANCEL_WORDS[o]}")
    missing = [j for j, o in zip(job_ids, outcomes, strict=True) if o == "missing"]
    if missing:
        raise CommandError(f"no such job: {', '.join(missing)}")


def _cancel_batch(batch: str, as_json: bool) -> None:
    def show(s: CancelSummary) -> None:
        if not as_json:
            err_console.print(f"  cancelling {batch}: {sum(s.counts.values()):,} jobs so far")

    async def go(p: Producer) -> tuple[CancelSummary, int]:
        summary = await p.cancel_batch(batch, show)
        return summary, (await p.batch_summary(batch)).total

    summary, total = with_producer(go)
    if not total:
        raise CommandError(f"no such batch: {batch}")
    if as_json:
        echo_json({"batch": batch, **summary.counts})
        return
    console.print(
        f"batch [bold]{batch}[/]: {summary.cancelled:,} cancelled"
        + (
            f", {summary.after_call:,} end after storing the call already paid for"
            if summary.after_call
            else ""
        )
        + "; new jobs into it are refused"
    )
    console.print(f"  undo: upscale retry --batch {batch} --state cancelled")


@main.command(
    help="Re-enqueue failed (or cancelled) jobs, attempts reset: by id, or a batch's subset "
    "(--batch B --state failed|cancelled). Exits 1 if a job does not exist."
)
@click.argument("job_ids", nargs=-1)
@click.option("--batch", help="Re-enqueue this batch's jobs in --state.")
@click.option(
    "--state",
    "states",
    type=click.Choice(["failed", "cancelled"]),
    multiple=True,
    help="With --batch: which ended jobs (repeatable; default failed).",
)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def retry(
    job_ids: tuple[str, ...], batch: str | None, states: tuple[RetryState, ...], as_json: bool
) -> None:
    if bool(job_ids) == bool(batch):
        raise click.UsageError("give job ids or --batch B (not both)")
    if batch:
        _retry_batch(batch, states or ("failed",), as_json)
        return

    async def go(p: Producer) -> list[Retried]:
        out = []
        for j in job_ids:
            r = await p.retry(j)
            out.append(Retried(j, None if r is None else r.outcome))
        return out

    rows = with_producer(go)
    missing = [r.job_id for r in rows if r.outcome is None]
    if as_json:
        echo_json([asdict(r) for r in rows])
    else:
        for r in rows:
            if r.outcome is not None:
                console.print(f"{r.job_id}: {r.outcome}")
    if missing:
        raise CommandError(f"no such job: {', '.join(missing)}")


def _retry_batch(batch: str, states: tuple[RetryState, ...], as_json: bool) -> None:
    def show(n: int) -> None:
        if not as_json:
            err_console.print(f"  re-enqueued {n:,} so far")

    async def go(p: Producer) -> tuple[Counter[str], int]:
        results = await p.retry_batch(batch, states, show)
        return Counter(r.outcome for r in results), (await p.batch_summary(batch)).total

    counts, total = with_producer(go)
    if not total:
        raise CommandError(f"no such batch: {batch}")
    if as_json:
        echo_json({"batch": batch, "states": list(states), **counts})
        return
    console.print(
        f"batch [bold]{batch}[/]: {counts.get('requeued', 0):,} {'/'.join(states)} jobs "
        f"re-enqueued"
        + (f", {counts['duplicate']:,} already queued" if counts["duplicate"] else "")
    )
