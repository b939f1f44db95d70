"""Our side of the books: the ledger's spend per day, pool upstream and batch
(`Keys.spend_day_by`, written by `_money.lua` add_spend with every other spend counter).
Possibly billed calls are in it (an unknown outcome counts as billed until settled)."""

from __future__ import annotations

from datetime import date, timedelta

from redis.asyncio import Redis

from worker.keys import Keys
from worker.ledger.reads import text

# (day, pool upstream, batch) -> micro-USD; upstream '' where the call's key is not known
OurBooks = dict[tuple[str, str, str], int]


def days(since: date, until: date) -> list[str]:
    return [(since + timedelta(days=i)).isoformat() for i in range((until - since).days + 1)]


async def ledger_books(redis: Redis, day_list: list[str]) -> OurBooks:
    async with redis.pipeline(transaction=False) as pipe:
        for day in day_list:
            pipe.hgetall(Keys.spend_day_by(day))
        hashes = await pipe.execute()
    books: OurBooks = {}
    for day, h in zip(day_list, hashes, strict=True):
        for field, micros in h.items():
            upstream, _, batch = text(field).partition("|")
            books[(day, upstream, batch)] = books.get((day, upstream, batch), 0) + int(micros)
    return books
