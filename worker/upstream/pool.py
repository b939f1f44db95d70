"""The pool: the upstreams work goes to (`UPSCALE_UPSTREAMS`), each a route, a URL and one API
key with its own tier, in-flight cap, price and budget; upstreams may share a wallet and an
in-flight group. Without it the pool is one upstream named `default` built from the flat
settings. Each carries its own upstream section (route, URL, key, price) and its own flow
section (tier, in-flight cap), so the route adapters and the result-host check need no notion
of pools."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from functools import cached_property

from dotenv import dotenv_values
from pydantic import SecretStr

from worker.contract import usd_to_micros
from worker.keys import Keys, UpstreamKeys
from worker.settings import (
    Settings,
    UpstreamFlowSettings,
    UpstreamSettings,
    UpstreamSpec,
    default_inflight_cap,
)

DEFAULT_NAME = "default"


class PoolConfigError(ValueError):
    """A pool entry that cannot be used (names the setting and the fix)."""


@dataclass(frozen=True)
class PoolUpstream:
    """One upstream of the pool (never its API key in logs, status or metrics: its name)."""

    name: str
    upstream: UpstreamSettings  # its route, URL, API key and price
    flow: UpstreamFlowSettings  # its tier and in-flight cap
    budget_usd: float | None = None
    wallet: str | None = None  # the balance it shares with the pool's other upstreams naming it
    inflight_group: str | None = None  # the in-flight cap it shares (an Ideogram organisation)
    group_cap: int = 0  # that group's cap (0: no group)

    @cached_property
    def keys(self) -> UpstreamKeys:
        return Keys.up(self.name)

    @cached_property
    def canary_lock(self) -> str:
        """The lock that lets one canary call through a pause: its wallet's, else its own."""
        return Keys.wallet_canary(self.wallet) if self.wallet else self.keys.canary

    @cached_property
    def cap_word(self) -> str:
        """Where the in-flight cap a 429 named is kept: its group's, else its own `said`."""
        return Keys.group_said(self.inflight_group) if self.inflight_group else self.keys.said

    @property
    def price_micros(self) -> int:
        return usd_to_micros(self.upstream.price_usd)

    @property
    def budget_micros(self) -> int:
        return -1 if self.budget_usd is None else usd_to_micros(self.budget_usd)


def load_pool(settings: Settings) -> list[PoolUpstream]:
    if not settings.upstreams:
        return [PoolUpstream(DEFAULT_NAME, settings.upstream, settings.flow.for_upstream(), None)]
    caps = _group_caps(settings)
    return [_upstream(settings, spec, caps) for spec in settings.upstreams]


def _group_caps(settings: Settings) -> dict[str, int]:
    """Each in-flight group's cap: what its entries say (they must agree), else the setting."""
    said: dict[str, set[int]] = {}
    for spec in settings.upstreams:
        if spec.inflight_group:
            caps = said.setdefault(spec.inflight_group, set())
            if spec.group_max_inflight is not None:
                caps.add(spec.group_max_inflight)
    for group, caps in said.items():
        if len(caps) > 1:
            raise PoolConfigError(
                f"UPSCALE_UPSTREAMS: the entries of inflight_group {group!r} give different "
                f"group_max_inflight values ({', '.join(map(str, sorted(caps)))}); give one "
                "value, or set it on one entry only"
            )
    default = settings.flow.group_max_inflight
    return {group: next(iter(caps), default) for group, caps in said.items()}


def _upstream(settings: Settings, spec: UpstreamSpec, caps: dict[str, int]) -> PoolUpstream:
    base, flow = settings.upstream, settings.flow
    route = spec.route or base.route
    upstream = replace(base, route=route, api_key=SecretStr(_key(settings, spec)))
    if spec.url and route == "gateway":
        upstream = replace(upstream, gateway_url=spec.url.removesuffix("/v1"))
    elif spec.url:
        upstream = replace(upstream, ideogram_url=spec.url)
    if spec.price_usd is not None:
        upstream = replace(upstream, price_usd=spec.price_usd)
    if spec.max_inflight is not None:
        inflight = spec.max_inflight
    elif route != base.route:
        inflight = default_inflight_cap(route)  # the route's own default, not the other route's
    else:
        inflight = flow.inflight_cap
    rpm = spec.rpm if spec.rpm is not None else flow.rate_rpm
    return PoolUpstream(
        spec.name,
        upstream,
        flow.for_upstream(rate_rpm=rpm, inflight_cap=inflight),
        spec.budget_usd,
        wallet=spec.wallet,
        inflight_group=spec.inflight_group,
        group_cap=caps.get(spec.inflight_group or "", 0),
    )


def _key(settings: Settings, spec: UpstreamSpec) -> str:
    """The API key from the variable the entry names (the environment, else `.env`)."""
    if spec.api_key_env == "UPSCALE_API_KEY":
        return settings.upstream.api_key_value
    value = os.environ.get(spec.api_key_env)
    if value is None:
        value = dotenv_values(".env").get(spec.api_key_env) if os.path.exists(".env") else None
    if not value:
        raise PoolConfigError(
            f"UPSCALE_UPSTREAMS: upstream {spec.name!r} takes its key from {spec.api_key_env}, "
            f"which is not set; set {spec.api_key_env} or fix api_key_env"
        )
    return value
