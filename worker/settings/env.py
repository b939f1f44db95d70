"""Every variable the environment may set (prefix `UPSCALE_`; `REDIS_URL` also accepted): its
field, default, bounds and meaning, grouped by the section that reads it.

`SettingsFields` declares them; `worker.settings.parser.Settings` (the class to use) adds the
checks and the sections.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.contract import DEFAULT_DEST_TEMPLATE
from worker.formats import OutputFormat
from worker.settings.pool import UpstreamSpec
from worker.settings.sections import ImageMode, ResponseFormat, Route

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def duration_s(v: object) -> object:
    """`90`, `90s`, `30m`, `24h` or `7d` as seconds (anything else is left to the int check)."""
    if isinstance(v, str) and v.strip()[-1:].lower() in _UNITS and v.strip()[:-1].isdigit():
        return int(v.strip()[:-1]) * _UNITS[v.strip()[-1].lower()]
    return v


class SettingsFields(BaseSettings):
    """The flat fields (use `Settings`: it checks them and reads them as sections)."""

    # `.env` in the working directory is read too (the environment wins). List settings are
    # JSON, decoded by `Settings._json_value` so a plain value gets a message saying so.
    model_config = SettingsConfigDict(
        env_prefix="UPSCALE_",
        extra="ignore",
        env_file=".env",
        env_file_encoding="utf-8",
        enable_decoding=False,
        frozen=True,  # read once; its sections are built from it and kept
    )

    # --- redis --------------------------------------------------------------------------
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "UPSCALE_REDIS_URL"),
    )
    redis_sentinels: list[str] = Field(
        default_factory=list,
        description='Sentinel "host:port" list; the primary is found by name (TLS: rediss://).',
    )
    redis_sentinel_master: str = "mymaster"
    redis_wait_replicas: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Replicas that must acknowledge a money write (enqueue, a call journaled before it "
            "leaves, a saved answer) before it counts (Redis WAIT). Unset: every replica the "
            "primary reports connected; 0: never wait."
        ),
    )
    redis_wait_timeout_ms: int = Field(
        default=1000,
        ge=10,
        description="How long one WAIT for replicas may take before the count is re-read.",
    )

    # --- s3 -----------------------------------------------------------------------------
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint; unset means AWS (boto3's own resolution)."
    )
    s3_region: str | None = Field(
        default=None,
        description="Unset: AWS_REGION, else boto3's chain (AWS_DEFAULT_REGION, profile).",
    )
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    s3_max_pool_connections: int = Field(default=32, ge=1)
    presign_ttl_s: int = Field(default=3600, ge=1)
    upload_part_bytes: int = Field(default=8 * 1024 * 1024, ge=1)

    # --- upstream -----------------------------------------------------------------------
    route: Route = "gateway"
    gateway_url: str = "http://127.0.0.1:8080"
    ideogram_url: str = "https://api.ideogram.ai/upscale"
    api_key: SecretStr = SecretStr("")
    model: str = "ideogram/ideogram-upscale"
    gateway_path: str = "/v1/images/generations"
    gateway_edits_path: str = "/v1/images/edits"
    gateway_jobs_path: str = "/v1/jobs/{id}"
    image_mode: ImageMode = "url"
    image_field: str = "image"
    response_format: ResponseFormat = "url"
    price_usd: float = Field(default=0.06, ge=0, description="Billed per output image.")
    result_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts result URLs may be downloaded from; empty = the upstream's own host.",
    )
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=120.0, gt=0)
    async_poll_interval_s: float = Field(default=3.0, ge=3.0)

    upstreams: list[UpstreamSpec] = Field(
        default_factory=list,
        description="A pool of upstream keys: a JSON list, or the path of a JSON file holding "
        "one. Unset: one key named `default` from the settings above.",
    )

    # --- flow control (global, in Redis) ------------------------------------------------
    rate_rpm: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default=600,
        description="The key's requests per minute: the start and the ceiling (`auto`: the "
        "upstream's x-ratelimit-limit-requests); a smaller limit the upstream reports wins.",
    )
    rate_burst_factor: float | None = Field(
        default=None,
        ge=0,
        description="Unset: no burst cap of our own (a burst rule is learned from a 429). "
        "<= 1: even pacing, 60/RPM s apart. > 1: at most factor x RPM per burst window.",
    )
    rate_burst_window_s: float = Field(
        default=10.0, gt=0, description="The burst window (set, or learned from a 429)."
    )
    burst_learn_s: float = Field(
        default=600.0, gt=0, description="How long a burst cap learned from a 429 holds."
    )
    rate_window_margin_s: float = Field(
        default=0.5,
        description="Added to every window we count over (60 s, the burst window): the "
        "network jitter between our send time and the upstream's arrival time.",
    )
    max_inflight: int | None = Field(
        default=None,
        ge=1,
        description="Global cap on in-flight calls (unset: 10 on the Ideogram route, whose "
        "organisations may have 10 images in progress; 64 on the gateway, limited per minute).",
    )
    lease_s: int = Field(
        default=20, ge=3, description="In-flight slot lease; renewed while its call runs."
    )
    pause_poll_s: float = Field(default=2.0, gt=0)
    canary_interval_s: float = Field(
        default=0.0, description="Auto-resume probe interval while paused by 402; 0 = manual only."
    )
    circuit_threshold: int = Field(default=5, ge=1)
    circuit_open_s: float = 30.0
    budget_total_usd: float | None = None
    budget_daily_usd: float | None = None
    budget_batch_usd: float | None = None
    bulk_floor: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Share of the rate the bulk lane keeps while live work waits.",
    )

    # --- jobs and the data path ---------------------------------------------------------
    dest_template: str = DEFAULT_DEST_TEMPLATE
    output_format: OutputFormat = Field(
        default="source",
        description="source (keep its format), upstream (its bytes as they are), or a fixed "
        "png/jpeg/webp/avif. Producers use it too: it decides the destination's extension.",
    )
    output_quality: int = Field(
        default=92, ge=1, le=100, description="Quality of lossy outputs (JPEG, WebP, AVIF)."
    )
    max_attempts: int = Field(default=5, ge=1, description="Real failures before a job fails.")
    backoff_base_s: float = 2.0
    backoff_max_s: float = 300.0
    job_timeout_s: int = Field(default=600, ge=1)
    run_lease_s: int = Field(
        default=20,
        ge=3,
        le=300,
        description="A job run's lease, renewed by a heartbeat; expired runs are reclaimed.",
    )
    max_jobs: int = Field(default=16, ge=1, description="Concurrent jobs per worker process.")
    bulk_max_jobs: int | None = Field(
        default=None, ge=1, description="Concurrent bulk jobs per process (default: max_jobs)."
    )
    max_input_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1, description="The upstream's input cap (docs: 10 or 25 MB)."
    )
    max_source_bytes: int = Field(
        default=200 * 1024 * 1024, ge=1, description="Largest source object read (to re-encode it)."
    )
    convert_inputs: bool = Field(
        default=True, description="Convert TIFF/BMP/GIF/... to PNG (else such inputs fail)."
    )
    reencode_oversize: bool = Field(
        default=True, description="Re-encode inputs over max_input_bytes to fit (else fail)."
    )
    max_result_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    # completion reports (`worker.report`)
    report_uri: str | None = Field(
        default=None,
        pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$",
        description="Where batch completion reports go, as s3://bucket/prefix/ (one folder per "
        "batch). Unset: `.upscale-reports/<batch>/` in the batch's first destination bucket.",
    )
    ledger_retention_s: Annotated[int, BeforeValidator(duration_s)] = Field(
        default=86_400,
        ge=1,
        validation_alias=AliasChoices("UPSCALE_LEDGER_RETENTION", "UPSCALE_LEDGER_RETENTION_S"),
        description="How long a final job record stays in Redis (seconds, or 30m / 24h / 7d; "
        "a batch's records: after its report is written). Records holding money never expire; "
        "after expiry the output's job-id metadata still prevents a second purchase.",
    )

    # --- callbacks ----------------------------------------------------------------------
    callback_secret: SecretStr = Field(
        default=SecretStr(""), description="HMAC-SHA256 key that signs completion notices."
    )
    callback_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts callbacks may be sent to (`.example.com` = any subdomain).",
    )
    callback_allow_http: bool = False
    callback_max_tries: int = Field(default=6, ge=1)
    callback_backoff_s: float = 2.0

    # --- producers ----------------------------------------------------------------------
    api_token: SecretStr = Field(
        default=SecretStr(""),
        description="Bearer token for the webhook / HTTP enqueue endpoint (and dashboard writes).",
    )
    eventbridge_keys_encoded: bool = False
    guard_prefixes: list[str] = Field(
        default_factory=list, description="Extra s3://bucket/prefix locations that hold outputs."
    )

    # --- ops ----------------------------------------------------------------------------
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"
    metrics_port: int | None = Field(
        default=None, description="Worker HTTP port: /metrics, /healthz, /readyz (unset = off)."
    )
    health_bucket: str | None = Field(
        default=None, description="A bucket readiness checks can HEAD (S3 reachable + allowed)."
    )
