"""Deprecated upstream endpoints: they keep working and say so (`Deprecation`, `Link: <...>;
rel="successor-version"`, a `notice` field). Each such answer is counted; the first per
endpoint in a process is logged, so an operator learns of it without a line per call."""

from __future__ import annotations

from typing import Any

import httpx
import structlog

from worker import metrics

log = structlog.get_logger("worker.upstream")

SUCCESSOR_REL = "successor-version"
_logged: set[str] = set()  # endpoints this process has warned about


def note(resp: httpx.Response, endpoint: str, body: dict[str, Any] | None = None) -> None:
    """Count and (once per endpoint) log an answer that says `endpoint` is deprecated.
    `endpoint` is a template ("/v2/generations/{id}"): one label per endpoint, not per id."""
    deprecation = resp.headers.get("deprecation")
    successor = resp.links.get(SUCCESSOR_REL, {}).get("url")
    if not deprecation and not successor:
        return
    metrics.UPSTREAM_DEPRECATED.labels(endpoint).inc()
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
