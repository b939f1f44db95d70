"""Rate limits per key: a 60 s rolling window of the key's RPM plus, unless `burst_factor` is
None, a burst window (at most factor x RPM per `burst_window_s`). Answers carry
`x-ratelimit-*-requests` headers. (Ideogram's cap on images in progress: `work.py`.)"""

from __future__ import annotations

import math
import time
from collections import deque

from infra.simulator.protocol import ApiError, reject
from infra.simulator.state import SimState


def rate_check(state: SimState, key: str) -> tuple[bool, float, int, int]:
    """(allowed, retry_after_s, limit, remaining). Admitted requests are recorded."""
    rpm = state.config.api_keys.get(key, 0)
    now = time.monotonic()
    w = state.windows.setdefault(key, deque())
    while w and w[0] <= now - 60:
        w.popleft()
    factor = state.config.burst_factor
    burst_max = max(1, math.floor(rpm * (factor or 0) * state.config.burst_window_s / 60))
    in_burst = [t for t in w if t > now - state.config.burst_window_s]
    if len(w) >= rpm:
        return False, w[len(w) - rpm] + 60 - now, rpm, 0
    if factor is not None and len(in_burst) >= burst_max:
        return (
            False,
            in_burst[len(in_burst) - burst_max] + state.config.burst_window_s - now,
            rpm,
            0,
        )
    w.append(now)
    return True, 0.0, rpm, rpm - len(w)


def reset_in(state: SimState, key: str) -> float:
    w = state.windows.get(key)
    return max(0.0, w[0] + 60 - time.monotonic()) if w else 0.0


def admit(state: SimState, key: str, route: int) -> dict[str, str]:
    """The rate headers of an admitted call; a 429 (`ApiError`) for one over a limit."""
    allowed, retry_after, limit, remaining = rate_check(state, key)
    rate_headers = {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": f"{max(1, round(reset_in(state, key)))}s",
    }
    if not allowed:
        raise ApiError(
            429,
            "rate limit exceeded",
            headers={"Retry-After": str(max(1, int(retry_after + 0.999))), **rate_headers},
            extra=reject(route, "rate_limit"),
        )
    return rate_headers
