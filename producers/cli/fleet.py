"""Fleet commands: `status` (a job, a batch or the fleet), `spend`, `pause`, `resume`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Mapping
from dataclasses import asdict
from typing import TypeVar

import click
from rich.table import Table

from producers.api import Producer
from producers.cli.common import JSON_HELP, console, echo_json, main, with_producer
from producers.errors import EXIT_USAGE, CommandError
from worker.api import (
    BatchSummary,
    FleetStatus,
    JobRecord,
    JobState,
    PauseInfo,
    SpendSummary,
    UnknownUpstream,
    UpstreamStatus,
)

T = TypeVar("T")


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
    async def go(p: Producer) -> JobRecord | BatchSummary | FleetStatus:
        if job_id:
            rec = await p.status(job_id)
            if rec is None:
                raise CommandError(f"no such job: {job_id}")
            return rec
        if batch:
            summary = await p.batch_summary(batch)
            if not summary.total:
                raise CommandError(f"no such batch: {batch}")
            return summary
        return await p.fleet_status()

    if watch and not job_id:
        return _watch(batch, interval)
    data = with_producer(go)
    if as_json:
        echo_json(data.model_dump(mode="json"))
    elif isinstance(data, JobRecord):
        _print_record(data)
    elif isinstance(data, BatchSummary):
        for line in _batch_lines(data):
            console.print(line)
    else:
        _print_fleet(data)


def _fmt_states(states: Mapping[JobState, int]) -> str:
    return "  ".join(f"{s}={states[s]}" for s in JobState if states.get(s)) or "no jobs"


def _print_record(rec: JobRecord) -> None:
    t = Table(show_header=False, box=None)
    for k, v in rec.model_dump().items():
        if v in (None, "", [], {}):
            continue
        t.add_row(f"[dim]{k}[/]", str(v))
    console.print(t)


def _fleet_lines(d: FleetStatus) -> list[str]:
    lines = [f"jobs: {_fmt_states(d.states)}   queue depth: {d.queue_depth}"]
    for lane, v in d.lanes.items():
        lines.append(
            f"  {lane:<4} depth {v.depth:>7}  calls/min {v.calls_last_minute:>5}  "
            f"oldest ready {v.oldest_age_s:.0f}s"
        )
    flow = d.flow_control
    if flow.pause:
        lines.append(f"[bold red]PAUSED[/] reason={flow.pause.reason}: {flow.pause.line()}")
    else:
        lines.append("[green]running[/] (not paused)")
    lines.append(
        f"in flight: {flow.inflight}  calls last minute: {flow.calls_last_minute}  "
        f"circuit: {flow.circuit}  cooldown: {flow.cooldown_s:.1f}s"
    )
    if len(flow.upstreams) > 1 or any(u.state != "open" for u in flow.upstreams):
        lines += [_upstream_line(u) for u in flow.upstreams]
    lines.append(f"spend: today ${d.spend.today_usd:.2f}  total ${d.spend.total_usd:.2f}")
    return lines


def _upstream_line(u: UpstreamStatus) -> str:
    """One upstream of the pool: its state (a pause says why and what lifts it), in flight
    (and its in-flight group's), calls last minute, spend."""
    colour = "green" if u.state == "open" else "red" if u.state == "paused" else "yellow"
    group = (
        f" (group {u.inflight_group} {u.group_inflight}/{u.group_cap})" if u.inflight_group else ""
    )
    wallet = f" wallet {u.wallet}" if u.wallet else ""
    return (
        f"  upstream [bold]{u.name}[/] ({u.route}{wallet}): [{colour}]{u.line}[/]  "
        f"in flight {u.inflight}/{u.inflight_cap}{group}  calls/min {u.calls_last_minute}  "
        f"${u.spend_usd:.2f}"
    )


def _batch_lines(d: BatchSummary) -> list[str]:
    return [
        f"batch [bold]{d.batch}[/]: {d.total} job(s), spend ${d.spend_usd:.2f}",
        "  " + _fmt_states(d.states),
    ]


def _print_fleet(d: FleetStatus) -> None:
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
                    lines = _batch_lines(await p.batch_summary(batch))
                else:
                    lines = _fleet_lines(await p.fleet_status())
                stamp = time.strftime("%H:%M:%S")
                live.update(
                    Group(*(Text.from_markup(x) for x in [f"[dim]{stamp}[/]", *lines])),
                    refresh=True,
                )
                await asyncio.sleep(interval)

    with contextlib.suppress(KeyboardInterrupt):
        with_producer(go)


@main.command(help="Show spend: total, today, and per batch.")
@click.option("--batch", multiple=True, help="Also show these batches.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def spend(batch: tuple[str, ...], as_json: bool) -> None:
    async def go(p: Producer) -> tuple[SpendSummary, dict[str, float]]:
        return await p.spend(), {b: (await p.batch_summary(b)).spend_usd for b in batch}

    sp, batches = with_producer(go)
    if as_json:
        echo_json({**sp.model_dump(mode="json"), "batches": batches})
        return
    console.print(f"today ({sp.day}): ${sp.today_usd:.2f}   total: ${sp.total_usd:.2f}")
    for b, usd in batches.items():
        console.print(f"  batch {b}: ${usd:.2f}")


# -- flow control -----------------------------------------------------------------------------
UPSTREAM_HELP = "Only this upstream of the pool (UPSCALE_UPSTREAMS), by its name."


async def _on_key(work: Awaitable[T]) -> T:
    try:
        return await work
    except UnknownUpstream as e:
        raise CommandError(str(e), EXIT_USAGE) from None


@main.command(help="Pause every worker: no new upstream call starts; jobs wait, nothing fails.")
@click.option("--detail", default="paused by an operator")
@click.option("--upstream", default="", metavar="NAME", help=UPSTREAM_HELP)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def pause(detail: str, upstream: str, as_json: bool) -> None:
    async def go(p: Producer) -> PauseInfo | None:
        return await _on_key(p.pause(detail, upstream=upstream))

    already = with_producer(go)
    if upstream:
        if as_json:
            echo_json({"paused": True, "upstream": upstream})
        else:
            console.print(
                f"upstream {upstream} paused: its work moves to the pool's other upstreams"
            )
        return
    if as_json:
        pause_json = asdict(already) if already else None
        echo_json({"paused": True, "already": bool(already), "pause": pause_json})
    elif already:
        console.print(
            f"already paused (reason={already.reason} {already.detail}); `upscale resume` lifts it"
        )
    else:
        console.print("paused: workers start no new upstream call; `upscale resume` lifts it")


@main.command(
    help="Lift a pause (after a top-up, a key fix, a raised cap, or a manual pause); an "
    "upstream's lifts its wallet's too."
)
@click.option("--upstream", default="", metavar="NAME", help=UPSTREAM_HELP)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def resume(upstream: str, as_json: bool) -> None:
    async def go(p: Producer) -> bool:
        return await _on_key(p.resume(upstream=upstream))

    was = with_producer(go)
    if as_json:
        echo_json({"resumed": was, "was_paused": was})
    else:
        console.print("resumed: workers pick jobs again" if was else "was not paused")
