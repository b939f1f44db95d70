"""Upstream adapters (one module per route) behind one interface, plus typed errors."""

from __future__ import annotations

import httpx

from worker.settings import UpstreamSettings
from worker.upstream.base import Upstream


def make_upstream(settings: UpstreamSettings, client: httpx.AsyncClient | None = None) -> Upstream:
    if settings.route == "ideogram":
        from worker.upstream.ideogram import IdeogramUpstream

        return IdeogramUpstream(settings, client)
    from worker.upstream.gateway import GatewayUpstream

    return GatewayUpstream(settings, client)
