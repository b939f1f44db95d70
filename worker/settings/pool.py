"""One entry of the pool (`UPSCALE_UPSTREAMS`), as parsed from its JSON: an *upstream* (a
route, a URL and one API key, with its own limits).

`worker.upstream.pool` turns entries into `PoolUpstream`s (each with its own sections).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from worker.settings.sections import Route

UpstreamName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]


class UpstreamSpec(BaseModel):
    """One upstream of the pool (`UPSCALE_UPSTREAMS`); what it leaves out comes from the flat
    settings (UPSCALE_ROUTE, UPSCALE_GATEWAY_URL / UPSCALE_IDEOGRAM_URL, UPSCALE_RATE_RPM, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: UpstreamName = Field(
        description="Shown in status, logs and metrics (never its API key); its state in Redis is "
        "`uq:up:<name>:*`."
    )
    route: Route | None = Field(default=None, description="Unset: `UPSCALE_ROUTE`.")
    url: str | None = Field(
        default=None,
        description="Base URL; unset: the route's (`UPSCALE_GATEWAY_URL` / `UPSCALE_IDEOGRAM_URL`).",
    )
    api_key_env: str = Field(
        default="UPSCALE_API_KEY",
        description="The variable that holds this upstream's API key, in the environment or "
        "`.env` (a key is never written in the list).",
    )
    rpm: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        default=None,
        description="This upstream's requests per minute; unset: `UPSCALE_RATE_RPM`.",
    )
    max_inflight: int | None = Field(
        default=None,
        ge=1,
        description="This upstream's in-flight cap; unset: on `UPSCALE_ROUTE`'s route as the "
        "settings say (`UPSCALE_MAX_INFLIGHT`), on the other route that route's default.",
    )
    price_usd: float | None = Field(
        default=None, ge=0, description="Per output image; unset: `UPSCALE_PRICE_USD`."
    )
    budget_usd: float | None = Field(
        default=None,
        ge=0,
        description="This upstream's own cap on spend (billed or possibly billed).",
    )
    wallet: UpstreamName | None = Field(
        default=None,
        description="The balance this upstream spends, shared by every entry naming it (an "
        "Ideogram workspace's keys; a gateway's scoped keys and sub-accounts bill the master "
        "account): an empty wallet (402) pauses them all, and only one canary call per "
        "interval goes to any of them. Unset: its own.",
    )
    inflight_group: UpstreamName | None = Field(
        default=None,
        description="Entries naming the same group share one in-flight cap, besides their own "
        "(Ideogram's organisation limit: images in progress across its keys and endpoints).",
    )
    group_max_inflight: int | None = Field(
        default=None,
        ge=1,
        description="The `inflight_group`'s cap (entries of one group must agree); unset: "
        "`UPSCALE_GROUP_MAX_INFLIGHT`. A smaller one a 429 names wins.",
    )
