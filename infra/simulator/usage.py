"""Spend as the upstreams report it, read from the bill (injected bills included): the gateway's
`GET /v1/usage/by-tag` (spend per `x-aig-tag`) and Ideogram's `GET /v2/account/usage` (an
organisation admin's key; time buckets of line items). Both cover the caller's organisation
(every key sharing its wallet) and one route each; days are UTC dates on the simulator's clock.

Shapes: by-tag rows `{tag, requests, cost_cents}` are documented (plus `cost_usd`, and `date`
with `group_by=day`: ours). Account usage: the query (`start_time`, `end_time`, `bucket_width`
1d|1h) and the line-item terms are documented; the nesting below is a guess."""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from typing import Any

from aiohttp import web

from infra.simulator import accounts, clock, wire
from infra.simulator.protocol import GATEWAY, IDEOGRAM, STATE, ApiError, api_key, read_endpoint
from infra.simulator.records import Bill
from infra.simulator.state import SimState

BUCKETS = {"1d": (86_400, 92), "1h": (3_600, 168)}  # width -> (seconds, most buckets)


def _org_bills(state: SimState, key: str, route: str) -> list[Bill]:
    keys = set(accounts.org_keys(state.config, accounts.of(state.config, key)))
    return [b for b in state.bill_log if b.key in keys and b.route == route]


def _caller(request: web.Request, route: int) -> tuple[SimState, str]:
    state = request.app[STATE]
    key = api_key(request, route)
    if key not in state.config.api_keys:
        raise ApiError(401, "invalid or missing API key")
    return state, key


@read_endpoint(GATEWAY)
async def by_tag(request: web.Request) -> web.Response:
    """`?month=YYYY-MM` (default: this month) or `?day=YYYY-MM-DD`, `?tag=` to keep one tag,
    `?group_by=day` for a row per tag per day. Untagged spend is the row with `tag: null`."""
    state, key = _caller(request, GATEWAY)
    q = request.query
    day, month = q.get("day"), q.get("month") or clock.month(state.now())
    per_day = q.get("group_by") == "day"
    rows: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    for b in _org_bills(state, key, "gateway"):
        date = clock.date(b.t)
        if (day and date != day) or (not day and clock.month(b.t) != month):
            continue
        if "tag" in q and b.tag != q["tag"]:
            continue
        row = rows[(b.tag, date if per_day else "")]
        row[0] += 1
        row[1] += b.usd
    out: list[dict[str, Any]] = []
    for (tag, date), (n, usd) in sorted(rows.items()):
        item = {"tag": tag or None, "requests": int(n), "cost_cents": round(usd * 100, 4)}
        out.append({**item, "cost_usd": round(usd, 6), **({"date": date} if date else {})})
    return web.json_response(out)


def _key_id(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _line_items(bills: list[Bill]) -> list[dict[str, Any]]:
    """Unique per (product, endpoint, key, unit price), as documented."""
    groups: dict[tuple[str, str, float], list[Bill]] = defaultdict(list)
    for b in bills:
        groups[(b.endpoint, b.key, round(b.usd / max(b.n, 1), 6))].append(b)
    items = []
    for (endpoint, key, unit_price), group in sorted(groups.items()):
        quantity = sum(b.n for b in group)
        items.append(
            {
                "product": wire.USAGE_PRODUCT,
                "endpoint": endpoint,
                "description": "Upscale",
                "dimensions": {"endpoint": endpoint},
                "api_key": {"id": _key_id(key), "redacted_key": f"...{key[-4:]}"},
                "billed_units": {"unit": "image", "quantity": quantity, "unit_price": unit_price},
                "cost_total": round(sum(b.usd for b in group), 6),
                "currency": "USD",
            }
        )
    return items


@read_endpoint(IDEOGRAM)
async def account_usage(request: web.Request) -> web.Response:
    state, key = _caller(request, IDEOGRAM)
    if not accounts.of(state.config, key).rule.admin:
        raise ApiError(404, "not found")  # documented: a non-admin's key gets a 404
    q = request.query
    width = q.get("bucket_width", "1d")
    if width not in BUCKETS:
        raise ApiError(400, "bucket_width must be 1d or 1h")
    step, most = BUCKETS[width]
    try:
        start = clock.parse_time(q["start_time"])
        end = clock.parse_time(q["end_time"]) if "end_time" in q else state.now()
    except (KeyError, ValueError):
        raise ApiError(400, "start_time (required) and end_time must be RFC 3339") from None
    first, last = math.floor(start / step) * step, math.ceil(end / step) * step
    if not 0 < (last - first) / step <= most:
        raise ApiError(400, f"the range must hold 1 to {most} buckets of {width}")
    bills = _org_bills(state, key, "ideogram")
    buckets = []
    for t0 in range(first, last, step):
        inside = [b for b in bills if t0 <= b.t < t0 + step]
        buckets.append(
            {
                "start_time": clock.iso(t0),
                "end_time": clock.iso(t0 + step),
                "line_items": _line_items(inside),
            }
        )
    body = {"bucket_width": width, "start_time": clock.iso(first), "end_time": clock.iso(last)}
    return web.json_response({**body, "buckets": buckets})
