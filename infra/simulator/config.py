"""Simulator configuration: every field can be set at start (--config-json) or at runtime
(`POST /_admin/config` with a partial object). Unknown fields are refused (a typo would
otherwise silently leave a rule off)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

ImageMode = Literal["url", "data_url", "edits"]  # as the worker's UPSCALE_IMAGE_MODE
KeyKind = Literal["plain", "scoped", "sub_account"]


class OrgConfig(BaseModel):
    """Keys sharing one wallet (one balance) and one in-flight cap: an Ideogram organisation,
    or a gateway master account with its scoped keys and sub-accounts."""

    model_config = ConfigDict(extra="forbid")
    keys: list[str]
    wallet_usd: float | None = None  # the one balance behind every key (None = unlimited)
    inflight_limit: int = Field(10, ge=1)  # images in progress, across every key and endpoint
    daily_limit_usd: float | None = None  # 402 daily_limit past it (None = no limit)


class KeyRule(BaseModel):
    """What one key may do. `scoped` past its cap: 403 scope_exceeded; `sub_account` past its
    cap: 402 budget_exceeded (both caps per calendar month; both bill their org's wallet)."""

    model_config = ConfigDict(extra="forbid")
    kind: KeyKind = "plain"
    spend_cap_usd: float | None = None
    models: list[str] | None = None  # a scoped allow-list (None = every model)
    daily_limit_usd: float | None = None
    admin: bool = False  # may read GET /v2/account/usage (an organisation admin's key)


class SimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    api_keys: dict[str, int] = Field(default_factory=lambda: {"sim-key": 600})  # key -> RPM
    # The published burst rule (2x RPM over 10 s) read as a cap within any 10 s; None: a plain
    # rolling 60 s window with no burst rule (what some upstreams enforce).
    burst_factor: float | None = 2.0
    burst_window_s: float = 10.0
    latency_ms: tuple[int, int] = (0, 0)
    wallet_usd: float | None = None  # None = unlimited
    # Keys with a wallet of their own (key -> USD; None = unlimited); the others share wallet_usd.
    wallets_usd: dict[str, float | None] = Field(default_factory=dict)
    price_usd: float = 0.06
    fault_500_rate: float = 0.0
    fault_503_rate: float = 0.0
    fail_next: list[int] = Field(default_factory=list)
    fail_next_retry_after: int = 1
    models: list[str] = Field(default_factory=lambda: ["ideogram/ideogram-upscale"])
    error_body_style: Literal["object", "string"] = "object"  # the gateway route's
    async_mode: bool = False
    async_min_poll_s: float = 3.0
    unsafe_rate: float = 0.0
    result_url_ttl_s: int = 86_400
    truncate_download_rate: float = 0.0
    truncate_next_downloads: int = 0
    download_delay_ms: int = 0
    max_input_bytes: int = 10 * 1024 * 1024
    ideogram_inflight_limit: int = 10  # images in progress for a key outside `orgs`
    max_files: int = 2000
    # Gateway route: answer a repeated `Idempotency-Key` with the first answer (not billed
    # again), marked `Idempotent-Replayed: true`. Off by default: many upstreams ignore it.
    honour_idempotency: bool = False
    # The Ideogram route the same way; off by default: the real API takes no idempotency key.
    ideogram_honour_idempotency: bool = False
    # Run (and bill) the next N calls, then drop the connection without an answer.
    disconnect_next: int = 0

    # -- organisations, wallets, key rules, the daily limit -----------------------------------
    orgs: dict[str, OrgConfig] = Field(default_factory=dict)
    key_rules: dict[str, KeyRule] = Field(default_factory=dict)
    # When every daily limit resets (UTC, HH:MM or HH:MM:SS; the simulator's clock).
    daily_reset_utc: str = Field("00:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?$")

    # -- async generations (Ideogram `async`/`webhook_url`) and jobs (gateway 202) -------------
    ideogram_poll_limit: int = Field(1000, ge=1)  # polls per organisation per window (docs)
    ideogram_poll_window_s: float = Field(10.0, gt=0)
    ideogram_pending_status: Literal["pending", "running"] = "pending"  # docs say `pending`
    async_fail_next: int = 0  # the next N async generations / jobs fail (not billed)
    async_failure_rate: float = 0.0
    file_retention_s: int = 7 * 86_400  # a result file is kept this long (the gateway: 7 days)

    # -- deprecation: the Ideogram v1 endpoints (`/upscale`, `/v1/generations/{id}`) ----------
    ideogram_v1_deprecated_at: int | None = None  # unix time; None = not deprecated

    # -- what GET /v1/models/{id}/schema declares for the reference image --------------------
    model_schema_image_mode: ImageMode = "url"
    model_schema_image_field: str = "image"
    model_schema_enforced: bool = False  # refuse (400) requests that disagree with the schema

    # -- test control: hold every call's work (in flight) until POST /_admin/release ----------
    hold_work: bool = False

    @model_validator(mode="after")
    def _keys_are_known(self) -> Self:
        seen: dict[str, str] = {}
        for name, org in self.orgs.items():
            for key in org.keys:
                if key not in self.api_keys:
                    raise ValueError(f"orgs.{name}.keys: a key is not in api_keys; add it there")
                if key in seen:
                    raise ValueError(f"orgs.{name}.keys: a key is also in orgs.{seen[key]}")
                seen[key] = name
        if any(k not in self.api_keys for k in self.key_rules):
            raise ValueError("key_rules: a key is not in api_keys; add it there (key -> RPM)")
        return self
