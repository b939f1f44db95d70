"""The pool of upstream keys: each with its own route, URL, key, tier, in-flight cap, price and
budget (`UPSCALE_UPSTREAMS`). Without it the pool is one key named `default` built from the flat
settings. Each member carries a full `Settings` with its own values, so the route adapters and
the result-host check need no notion of pools."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

from dotenv import dotenv_values
from pydantic import SecretStr

from worker.contract import usd_to_micros
from worker.keys import Keys, UpstreamKeys
from worker.settings import Settings, UpstreamSpec

DEFAULT_NAME = "default"


class PoolConfigError(ValueError):
    """A pool entry that cannot be used (names the setting and the fix)."""


@dataclass(frozen=True)
class Member:
    name: str
    settings: Settings  # the flat settings with this key's route, URL, key, tier and price
    budget_usd: float | None = None

    @cached_property
    def keys(self) -> UpstreamKeys:
        return Keys.up(self.name)

    @property
    def price_micros(self) -> int:
        return usd_to_micros(self.settings.price_usd)

    @property
    def budget_micros(self) -> int:
        return -1 if self.budget_usd is None else usd_to_micros(self.budget_usd)


def load_pool(settings: Settings) -> list[Member]:
    if not settings.upstreams:
        return [Member(DEFAULT_NAME, settings, None)]
    return [_member(settings, spec) for spec in settings.upstreams]


def _member(settings: Settings, spec: UpstreamSpec) -> Member:
    route = spec.route or settings.route
    update: dict[str, object] = {"route": route, "api_key": SecretStr(_key(settings, spec))}
    if spec.url:
        update["gateway_url" if route == "gateway" else "ideogram_url"] = spec.url
    if spec.rpm is not None:
        update["rate_rpm"] = spec.rpm
    if spec.max_inflight is not None:
        update["max_inflight"] = spec.max_inflight
    elif spec.route is not None and spec.route != settings.route:
        update["max_inflight"] = None  # the route's own default, not the other route's
    if spec.price_usd is not None:
        update["price_usd"] = spec.price_usd
    member = settings.model_copy(update=update)
    if member.route == "gateway" and member.gateway_url.endswith("/v1"):
        member = member.model_copy(update={"gateway_url": member.gateway_url.removesuffix("/v1")})
    return Member(spec.name, member, spec.budget_usd)


def _key(settings: Settings, spec: UpstreamSpec) -> str:
    """The key from the variable the entry names (the environment, else `.env`)."""
    if spec.api_key_env == "UPSCALE_API_KEY":
        return settings.api_key_value
    value = os.environ.get(spec.api_key_env)
    if value is None:
        value = dotenv_values(".env").get(spec.api_key_env) if os.path.exists(".env") else None
    if not value:
        raise PoolConfigError(
            f"UPSCALE_UPSTREAMS: upstream {spec.name!r} takes its key from {spec.api_key_env}, "
            f"which is not set; set {spec.api_key_env} or fix api_key_env"
        )
    return value
