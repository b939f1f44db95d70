"""One entry of the pool of upstream keys (`UPSCALE_UPSTREAMS`), as parsed from its JSON.

`worker.upstream.pool` turns entries into pool members (each with its own sections).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from worker.settings.sections import Route

UpstreamName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]


class UpstreamSpec(BaseModel):
    """One key of the pool (`UPSCALE_UPSTREAMS`); what it leaves out comes from the flat
    settings (UPSCALE_ROUTE, UPSCALE_GATEWAY_URL / UPSCALE_IDEOGRAM_URL, UPSCALE_RATE_RPM, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: UpstreamName = Field(
        description="Shown in status, logs and metrics (never the key); its state in Redis is "
        "`uq:up:<name>:*`."
    )
    route: Route | None = Field(default=None, description="Unset: `UPSCALE_ROUTE`.")
    url: str | None = Field(
        default=None,
        description="Base URL; unset: the route's (`UPSCALE_GATEWAY_URL` / `UPSCALE_IDEOGRAM_URL`).",
    )
    api_key_env: str = Field(
        default="UPSCALE_API_KEY",
        description="The variable that holds this key, in the environment or `.env` (a key is "
        "never written in the list).",
    )
    rpm: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        default=None, description="This key's requests per minute; unset: `UPSCALE_RATE_RPM`."
    )
    max_inflight: int | None = Field(
        default=None,
        ge=1,
        description="This key's in-flight cap; unset: on `UPSCALE_ROUTE`'s route as the "
        "settings say (`UPSCALE_MAX_INFLIGHT`), on the other route that route's default.",
    )
    price_usd: float | None = Field(
        default=None, ge=0, description="Per output image; unset: `UPSCALE_PRICE_USD`."
    )
    budget_usd: float | None = Field(
        default=None, ge=0, description="This key's own cap on spend (billed or possibly billed)."
    )
