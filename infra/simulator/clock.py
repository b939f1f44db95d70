"""The simulator's clock: real time plus an offset that tests move (`POST /_admin/clock`). It
dates bills, decides the billing day a daily limit counts in, and signs / expires result links
and files. Pacing (rate windows, poll intervals, latency) stays on the monotonic clock."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

from infra.simulator.config import SimConfig

DAY_S = 86_400


def now(offset_s: float) -> float:
    return time.time() + offset_s


def reset_offset_s(cfg: SimConfig) -> int:
    """Seconds after UTC midnight at which every daily limit resets (`daily_reset_utc`)."""
    parts = [int(p) for p in cfg.daily_reset_utc.split(":")]
    return parts[0] * 3600 + parts[1] * 60 + (parts[2] if len(parts) > 2 else 0)


def billing_day(cfg: SimConfig, t: float) -> int:
    """The billing day `t` falls in (days start at `daily_reset_utc`)."""
    return math.floor((t - reset_offset_s(cfg)) / DAY_S)


def next_reset(cfg: SimConfig, t: float) -> float:
    return (billing_day(cfg, t) + 1) * DAY_S + reset_offset_s(cfg)


def utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def iso(t: float) -> str:
    return utc(t).strftime("%Y-%m-%dT%H:%M:%SZ")


def date(t: float) -> str:
    return utc(t).strftime("%Y-%m-%d")


def month(t: float) -> str:
    return utc(t).strftime("%Y-%m")


def parse_time(value: str) -> float:
    """An RFC 3339 time, or a date (YYYY-MM-DD, midnight UTC), as unix seconds."""
    text = value.strip().replace("Z", "+00:00")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
