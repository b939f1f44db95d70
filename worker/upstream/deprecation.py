"""Deprecated upstream endpoints: they keep working and say so (`Deprecation`, `Link: <...>;
rel="successor-version"`, a `notice` field). Each such answer is counted; the first per
endpoint in a process is logged, so an operator learns of it without a line per call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import structlog

log = structlog.get_logger("worker.upstream")

SUCCESSOR_REL = "successor-version"
_logged: set[str] = set()  # endpoints this process has warned about
_watchers: list[Callable[[str], None]] = []  # `worker.metrics` counts them (a later layer)


def watch(on_deprecated: Callable[[str], None]) -> None:
    """Call `on_deprecated(endpoint)` for every answer that says its endpoint is deprecated."""
    _watchers.append(on_deprecated)


def note(resp: httpx.Response, endpoint: str, body: dict[str, Any] | None = None) -> None:
    """Count and (once per endpoint) log an answer that says `endpoint` is deprecated.
    `endpoint` is a template ("/v2/generations/{id}"): one label per endpoint, not per id."""
    deprecation = resp.headers.get("deprecation")
    successor = resp.links.get(SUCCESSOR_REL, {}).get("url")
    if not deprecation and not successor:
        return
    for on_deprecated in _watchers:
        on_deprecated(endpoint)
    if endpoint in _logged:
        return
    _logged.add(endpoint)
    notice = body.get("notice") if body else None
    log.warning(
        "upstream endpoint deprecated or superseded",
        endpoint=endpoint,
        deprecation=deprecation,
        successor=successor,
        notice=notice if isinstance(notice, str) else None,
    )
