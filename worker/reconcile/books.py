"""The upstreams' own books, read with free requests: the gateway's spend per `x-aig-tag`
(`GET /v1/usage/by-tag`, per day with `group_by=day`) and Ideogram's usage per day
(`GET /v2/account/usage`, an organisation admin's key). Each covers the key's organisation
(every key billing its wallet), so each distinct upstream is asked once."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx

from worker.contract import usd_to_micros
from worker.settings import env_var

USAGE_BY_TAG = "/v1/usage/by-tag"
ACCOUNT_USAGE = "/v2/account/usage"
MAX_DAY_BUCKETS = 92  # Ideogram's account usage: at most 92 buckets of 1d a request


class BooksUnreadable(Exception):
    """The upstream's books could not be read (one line: what and the fix); `unavailable`:
    the upstream did not answer (else it refused: a setting to fix)."""

    def __init__(self, message: str, *, unavailable: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable


# (day, tag) -> micro-USD; tag '' is untagged spend
TagBooks = dict[tuple[str, str], int]


def months(since: date, until: date) -> list[str]:
    out: list[str] = []
    d = since.replace(day=1)
    while d <= until:
        out.append(d.strftime("%Y-%m"))
        d = (d + timedelta(days=32)).replace(day=1)
    return out


async def gateway_books(
    client: httpx.AsyncClient, base: str, key: str, since: date, until: date, tag: str | None
) -> TagBooks:
    """Spend per day and tag from `since` on (`until`'s month included), as the gateway bills."""
    books: TagBooks = defaultdict(int)
    headers = {"Authorization": f"Bearer {key}"}
    base = base.rstrip("/")
    for month in months(since, until):
        params = {"month": month, "group_by": "day", **({"tag": tag} if tag is not None else {})}
        for row in await _get_rows(client, base + USAGE_BY_TAG, headers, params):
            day = row.get("date")
            if not isinstance(day, str):
                raise BooksUnreadable(
                    f"GET {base}{USAGE_BY_TAG} gave no per-day rows (group_by=day): "
                    "spend per day cannot be compared"
                )
            if day >= since.isoformat():
                books[(day, row.get("tag") or "")] += _row_micros(row)
    return dict(books)


def _row_micros(row: dict[str, Any]) -> int:
    if row.get("cost_usd") is not None:
        return usd_to_micros(float(row["cost_usd"]))
    return usd_to_micros(float(row.get("cost_cents") or 0) / 100)


async def _get_rows(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], params: dict[str, str]
) -> list[dict[str, Any]]:
    data = await _get(client, url, headers, params, fix=env_var("api_key"))
    rows = data.get("data") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise BooksUnreadable(f"GET {url} is not a list of spend rows")
    return [r for r in rows if isinstance(r, dict)]


async def ideogram_books(
    client: httpx.AsyncClient, ideogram_url: str, key: str, since: date
) -> dict[str, int]:
    """Spend per day from `since` on, as Ideogram bills the key's organisation."""
    parts = urlsplit(ideogram_url)
    url = f"{parts.scheme}://{parts.netloc}{ACCOUNT_USAGE}"
    books: dict[str, int] = defaultdict(int)
    start = since
    today = datetime.now(UTC).date()
    while start <= today:
        end = start + timedelta(days=MAX_DAY_BUCKETS)
        params = {"start_time": f"{start.isoformat()}T00:00:00Z", "bucket_width": "1d"}
        if end <= today:
            params["end_time"] = f"{end.isoformat()}T00:00:00Z"
        data = await _get(client, url, {"Api-Key": key}, params, fix=env_var("reconcile_admin_key"))
        for bucket in data.get("buckets") or [] if isinstance(data, dict) else []:
            day = str(bucket.get("start_time", ""))[:10]
            for item in bucket.get("line_items") or []:
                books[day] += usd_to_micros(float(item.get("cost_total") or 0))
        start = end
    return dict(books)


async def _get(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], params: dict[str, str], fix: str
) -> Any:
    try:
        resp = await client.get(url, headers=headers, params=params)
    except httpx.HTTPError as e:
        raise BooksUnreadable(f"GET {url} failed: {type(e).__name__}", unavailable=True) from None
    if resp.status_code in (401, 403):
        raise BooksUnreadable(f"GET {url} refused the key (HTTP {resp.status_code}): check {fix}")
    if resp.status_code == 404 and url.endswith(ACCOUNT_USAGE):
        raise BooksUnreadable(
            f"GET {url} answered 404: Ideogram's usage needs an organisation admin's key: set {fix}"
        )
    if not resp.is_success:
        raise BooksUnreadable(
            f"GET {url} answered HTTP {resp.status_code}", unavailable=resp.status_code >= 500
        )
    try:
        return resp.json()
    except ValueError:
        raise BooksUnreadable(f"GET {url} did not answer JSON") from None
