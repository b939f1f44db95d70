"""The pool of upstream keys: each with its own route, URL, key, tier, in-flight cap, price and
budget (`UPSCALE_UPSTREAMS`). Without it the pool is one key named `default` built from the flat
settings. Each member carries its own upstream section (route, URL, key, price) and its own
per-key flow section (tier, in-flight cap), so the route adapters and the result-host check
need no notion of pools."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from functools import cached_property

from dotenv import dotenv_values
from pydantic import SecretStr

from worker.contract import usd_to_micros
from worker.keys import Keys, UpstreamKeys
from worker.settings import (
    KeyFlowSettings,
    Settings,
    UpstreamSettings,
    UpstreamSpec,
    default_inflight_cap,
)

DEFAULT_NAME = "default"


class PoolConfigError(ValueError):
    """A pool entry that cannot be used (names the setting and the fix)."""


@dataclass(frozen=True)
class Member:
    name: str
    upstream: UpstreamSettings  # this key's route, URL, key and price
    flow: KeyFlowSettings  # this key's tier and in-flight cap
    budget_usd: float | None = None

    @cached_property
    def keys(self) -> UpstreamKeys:
        return Keys.up(self.name)

    @property
    def price_micros(self) -> int:
        return usd_to_micros(self.upstream.price_usd)

    @property
    def budget_micros(self) -> int:
        return -1 if self.budget_usd is None else usd_to_micros(self.budget_usd)


def load_pool(settings: Settings) -> list[Member]:
    if not settings.upstreams:
        return [Member(DEFAULT_NAME, settings.upstream, settings.flow.key(), None)]
    return [_member(settings, spec) for spec in settings.upstreams]


def _member(settings: Settings, spec: UpstreamSpec) -> Member:
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
    return Member(
        spec.name, upstream, flow.key(rate_rpm=rpm, inflight_cap=inflight), spec.budget_usd
    )


def _key(settings: Settings, spec: UpstreamSpec) -> str:
    """The key from the variable the entry names (the environment, else `.env`)."""
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
