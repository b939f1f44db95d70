"""Faults on demand: forced statuses for the next calls (`fail_next`), random 500 / 503 rates,
a connection dropped after a billed call (`disconnect_next`), truncated downloads, and failed
async jobs / generations (`async_fail_next`, `async_failure_rate`)."""

from __future__ import annotations

import random

from aiohttp import web

from infra.simulator.config import SimConfig
from infra.simulator.protocol import ApiError, reject


def take_forced(cfg: SimConfig) -> int | None:
    """The status forced on this call, if `fail_next` holds one (each is used once)."""
    return cfg.fail_next.pop(0) if cfg.fail_next else None


def forced_rate_limit(cfg: SimConfig, route: int) -> ApiError:
    """A forced 429 comes before the rate window, with `fail_next_retry_after`."""
    return ApiError(
        429,
        "rate limit exceeded",
        headers={"Retry-After": str(cfg.fail_next_retry_after)},
        extra=reject(route, "rate_limit"),
    )


def forced_failure(status: int, route: int) -> ApiError:
    return ApiError(
        status,
        f"forced failure {status}",
        extra=reject(route, "insufficient_funds") if status == 402 else {},
    )


def roll_server_error(cfg: SimConfig) -> None:
    """A 500 or 503 (`ApiError`) at the configured rates, once the call's price is held."""
    roll = random.random()
    if roll < cfg.fault_500_rate:
        raise ApiError(500, "internal error")
    if roll < cfg.fault_500_rate + cfg.fault_503_rate:
        raise ApiError(503, "upstream saturated, retry later")


def disconnect_after_work(cfg: SimConfig, request: web.Request) -> bool:
    """A reset after the work is done: the caller never learns it was billed."""
    if cfg.disconnect_next <= 0:
        return False
    cfg.disconnect_next -= 1
    if request.transport is not None:
        request.transport.close()
    return True


def truncate_download(cfg: SimConfig) -> bool:
    """Whether this download closes mid-body (`truncate_next_downloads`, `_download_rate`)."""
    truncate = cfg.truncate_next_downloads > 0 or random.random() < cfg.truncate_download_rate
    if cfg.truncate_next_downloads > 0:
        cfg.truncate_next_downloads -= 1
    return truncate


def take_async_failure(cfg: SimConfig) -> bool:
    """Whether this async job / generation fails (`async_fail_next`, `async_failure_rate`)."""
    if cfg.async_fail_next > 0:
        cfg.async_fail_next -= 1
        return True
    return random.random() < cfg.async_failure_rate
