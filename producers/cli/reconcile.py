"""`upscale reconcile`: our ledger beside the upstream's books, per day and batch; exits 1 when
a difference is over `UPSCALE_RECONCILE_THRESHOLD_USD`. The result is kept in Redis for the
status page and `/metrics`."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import click
from rich.table import Table

from producers.api import Producer
from producers.cli.common import JSON_HELP, console, echo_json, main, with_producer
from producers.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_UNAVAILABLE, CommandError
from worker.api import (
    BooksUnreadable,
    Reconciliation,
    ReconciliationRow,
    env_var,
    register_secret,
    save_last,
)
from worker.api import (
    reconcile as reconcile_books,
)

DEFAULT_DAYS = 7


def _day(_ctx: click.Context, _param: click.Parameter, value: str | None) -> date:
    today = datetime.now(UTC).date()
    if value is None:
        return today - timedelta(days=DEFAULT_DAYS - 1)
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a day: use YYYY-MM-DD") from None
    if day > today:
        raise click.BadParameter(f"{value} is in the future (today is {today}, UTC)")
    return day


@main.command(
    help="Hold the ledger's spend beside the upstream's books (the gateway's spend per "
    "x-aig-tag = batch, Ideogram's account usage) per day and batch, with the difference; "
    "exit 1 when one is over UPSCALE_RECONCILE_THRESHOLD_USD."
)
@click.option(
    "--since",
    callback=_day,
    metavar="DAY",
    help=f"First day (YYYY-MM-DD, UTC) to compare; default: the last {DEFAULT_DAYS} days.",
)
@click.option("--batch", help="Only this batch (the gateway's books for its tag).")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def reconcile(since: date, batch: str | None, as_json: bool) -> None:
    async def go(p: Producer) -> Reconciliation:
        for secret in (p.settings.upstream.api_key, p.settings.ops.reconcile_admin_key):
            if secret is not None:
                register_secret(secret.get_secret_value())
        try:
            rec = await reconcile_books(p.redis, p.settings, since=since, batch=batch)
        except BooksUnreadable as e:
            code = EXIT_UNAVAILABLE if e.unavailable else EXIT_CONFIG
            raise CommandError(f"reconcile: {e}", code) from None
        await save_last(p.redis, rec)
        return rec

    rec = with_producer(go)
    if as_json:
        echo_json(rec.model_dump(mode="json"))
    else:
        console.print(_table(rec))
    if rec.over:
        worst = max(rec.over, key=lambda r: abs(r.diff_usd))
        raise CommandError(
            f"the upstream's books differ from the ledger by more than "
            f"${rec.threshold_usd:.2f} ({env_var('reconcile_threshold_usd')}) on "
            f"{len(rec.over)} day(s): {'; '.join(_line(r) for r in rec.over[:3])}"
            + ("; ..." if len(rec.over) > 3 else "")
            + f" (largest: {worst.where})",
            EXIT_FAILED,
        )


def _line(r: ReconciliationRow) -> str:
    return (
        f"{r.where}: ledger ${r.ledger_usd:.2f}, upstream ${r.upstream_usd:.2f} ({r.diff_usd:+.2f})"
    )


def _table(rec: Reconciliation) -> Table:
    title = f"ledger vs the upstream's books, {rec.since} to {rec.until}"
    table = Table(title=title + (f", batch {rec.batch}" if rec.batch else ""))
    for col in ("route", "day", "batch", "ledger", "upstream", "difference"):
        table.add_column(
            col, justify="right" if col in ("ledger", "upstream", "difference") else "left"
        )
    over = set(id(r) for r in rec.over)
    for r in rec.rows:
        diff = f"{r.diff_usd:+.2f}"
        table.add_row(
            r.route,
            r.day,
            {"": "(none)"}.get(r.batch, r.batch),
            f"${r.ledger_usd:.2f}",
            f"${r.upstream_usd:.2f}",
            f"[bold red]{diff}[/]" if id(r) in over else diff,
        )
    table.add_row(
        "",
        "total",
        "",
        f"${rec.ledger_usd:.2f}",
        f"${rec.upstream_usd:.2f}",
        f"{rec.drift_usd:+.2f}",
    )
    return table
