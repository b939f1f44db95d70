"""`upscale reconcile`: our ledger beside each upstream's books, per day and (gateway) batch.

Each route is compared where its books are kept: the gateway per day and `x-aig-tag` (we send
the batch there), Ideogram per day only (its usage has no tags). A pool upstream's spend counts
for its route; spend the ledger could not tie to an upstream counts for `UPSCALE_ROUTE`'s.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, date, datetime

import httpx
from redis.asyncio import Redis

from worker.reconcile.books import gateway_books, ideogram_books
from worker.reconcile.model import ALL_BATCHES, Reconciliation, Row
from worker.reconcile.ours import OurBooks, days, ledger_books
from worker.settings import Route, Settings
from worker.upstream.gateway import tag_for
from worker.upstream.pool import PoolUpstream, load_pool

READ_TIMEOUT_S = 30.0


async def reconcile(
    redis: Redis, settings: Settings, *, since: date, batch: str | None = None
) -> Reconciliation:
    """Read both books from `since` to today (UTC) and hold them side by side (raises
    BooksUnreadable when an upstream's books cannot be read)."""
    until = datetime.now(UTC).date()
    pool = load_pool(settings)
    routes = {m.name: m.upstream.route for m in pool}
    ours = await ledger_books(redis, days(since, until))
    rows: list[Row] = []
    async with httpx.AsyncClient(timeout=READ_TIMEOUT_S, follow_redirects=False) as client:
        if gateway := _first_per_url(pool, "gateway"):
            theirs: dict[tuple[str, str], int] = defaultdict(int)
            for m in gateway:
                tag = tag_for(batch) if batch is not None else None
                got = await gateway_books(
                    client, m.upstream.gateway_url, m.upstream.api_key_value, since, until, tag
                )
                for k, v in got.items():
                    theirs[k] += v
            mine = _by_day_and_tag(ours, routes, settings.upstream.route, batch)
            rows += _rows("gateway", mine, theirs)
        if (ideogram := _first_per_url(pool, "ideogram")) and batch is None:
            admin = settings.ops.reconcile_admin_key
            billed: dict[tuple[str, str], int] = defaultdict(int)
            for m in ideogram:
                key = admin.get_secret_value() if admin else m.upstream.api_key_value
                got_days = await ideogram_books(client, m.upstream.ideogram_url, key, since)
                for day, v in got_days.items():
                    billed[(day, ALL_BATCHES)] += v
            rows += _rows("ideogram", _by_day(ours, routes, settings.upstream.route), billed)
    return Reconciliation(
        at=time.time(),
        since=since.isoformat(),
        until=until.isoformat(),
        batch=batch,
        threshold_usd=settings.ops.reconcile_threshold_usd,
        rows=rows,
    )


def _first_per_url(pool: list[PoolUpstream], route: Route) -> list[PoolUpstream]:
    """One pool upstream per URL: a key's books cover its organisation (scoped keys and
    sub-accounts bill the master account), so asking each key would count them twice."""
    seen: dict[str, PoolUpstream] = {}
    for m in pool:
        if m.upstream.route == route:
            url = m.upstream.gateway_url if route == "gateway" else m.upstream.ideogram_url
            seen.setdefault(url, m)
    return list(seen.values())


def _route(upstream: str, routes: dict[str, Route], default: Route) -> Route:
    return routes.get(upstream, default)


def _by_day_and_tag(
    ours: OurBooks, routes: dict[str, Route], default: Route, batch: str | None
) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = defaultdict(int)
    for (day, upstream, b), micros in ours.items():
        if _route(upstream, routes, default) == "gateway" and (batch is None or b == batch):
            out[(day, tag_for(b) if b else "")] += micros
    return out


def _by_day(ours: OurBooks, routes: dict[str, Route], default: Route) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = defaultdict(int)
    for (day, upstream, _), micros in ours.items():
        if _route(upstream, routes, default) == "ideogram":
            out[(day, ALL_BATCHES)] += micros
    return out


def _rows(
    route: Route, mine: dict[tuple[str, str], int], theirs: dict[tuple[str, str], int]
) -> list[Row]:
    keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) or theirs.get(k))
    return [
        Row(
            route=route,
            day=d,
            batch=b,
            ledger_micros=mine.get((d, b), 0),
            upstream_micros=theirs.get((d, b), 0),
        )
        for d, b in keys
    ]
