"""Simulator configuration: every field can be set at start (--config-json) or at runtime
(`POST /_admin/config` with a partial object)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class SimConfig(BaseModel):
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
    error_body_style: Literal["object", "string"] = "object"
    async_mode: bool = False
    async_min_poll_s: float = 3.0
    unsafe_rate: float = 0.0
    result_url_ttl_s: int = 86_400
    truncate_download_rate: float = 0.0
    truncate_next_downloads: int = 0
    download_delay_ms: int = 0
    max_input_bytes: int = 10 * 1024 * 1024
    ideogram_inflight_limit: int = 10
    max_files: int = 2000
    # Answer a repeated `Idempotency-Key` with the first answer (not billed again), marked
    # `Idempotent-Replayed: true`. Off by default: many upstreams ignore the header.
    honour_idempotency: bool = False
    # Run (and bill) the next N calls, then drop the connection without an answer.
    disconnect_next: int = 0
