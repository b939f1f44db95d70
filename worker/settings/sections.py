"""The sections of the settings: what each component takes.

Built from the flat `Settings` (the parser of the environment, where a bad value is reported
by its variable); each component takes only its own. Field names are the flat names, less a
prefix the section already says (`redis_url` -> `redis.url`, `callback_hosts` ->
`callbacks.hosts`, `s3_region` -> `s3.region`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import SecretStr

from worker.formats import OutputFormat

Route = Literal["gateway", "ideogram"]
ImageMode = Literal["url", "data_url", "edits"]
ResponseFormat = Literal["url", "b64_json"]


def default_inflight_cap(route: Route) -> int:
    """Ideogram organisations may have 10 images in progress; the gateway is limited per minute."""
    return 10 if route == "ideogram" else 64


@dataclass(frozen=True, kw_only=True)
class RedisSettings:
    """`REDIS_URL`, `UPSCALE_REDIS_SENTINELS`, `UPSCALE_REDIS_SENTINEL_MASTER`,
    `UPSCALE_REDIS_WAIT_REPLICAS`, `UPSCALE_REDIS_WAIT_TIMEOUT_MS`."""

    url: str
    sentinels: tuple[str, ...]
    sentinel_master: str
    wait_replicas: int | None  # None: as many as the primary reports connected
    wait_timeout_ms: int


@dataclass(frozen=True, kw_only=True)
class S3Settings:
    """`UPSCALE_S3_*`, plus how objects are read (presigned URLs) and written (parts)."""

    endpoint_url: str | None
    region: str | None
    access_key_id: str | None
    secret_access_key: SecretStr | None
    addressing_style: Literal["auto", "path", "virtual"]
    max_pool_connections: int
    presign_ttl_s: int
    upload_part_bytes: int


@dataclass(frozen=True, kw_only=True)
class UpstreamSettings:
    """One upstream key: route, URL, key, request shape, price, timeouts (each pool member
    has its own)."""

    route: Route
    gateway_url: str
    ideogram_url: str
    api_key: SecretStr
    model: str
    gateway_path: str
    gateway_edits_path: str
    gateway_jobs_path: str
    image_mode: ImageMode
    image_field: str
    response_format: ResponseFormat
    price_usd: float
    result_hosts: tuple[str, ...]
    connect_timeout_s: float
    read_timeout_s: float
    async_poll_interval_s: float

    @property
    def api_key_value(self) -> str:
        return self.api_key.get_secret_value()

    @property
    def base_url(self) -> str:
        """The URL of this key's route."""
        return self.gateway_url if self.route == "gateway" else self.ideogram_url

    def allowed_result_hosts(self) -> set[str]:
        hosts = {h.lower() for h in self.result_hosts}
        if not hosts:
            hosts.add((urlsplit(self.base_url).hostname or "").lower())
        return hosts


@dataclass(frozen=True, kw_only=True)
class KeyFlowSettings:
    """One upstream key's limits in the flow control (each pool member has its own)."""

    rate_rpm: int | Literal["auto"]
    inflight_cap: int  # `UPSCALE_MAX_INFLIGHT`, else the route's default
    rate_burst_factor: float | None
    rate_burst_window_s: float
    burst_learn_s: float
    rate_window_margin_s: float

    @property
    def rpm_ceiling(self) -> int:
        """The configured tier (0 = `auto`: whatever the upstream's headers say)."""
        return 0 if self.rate_rpm == "auto" else self.rate_rpm

    def key(self, **changes: Any) -> KeyFlowSettings:
        """Just the per-key limits (of a fleet section: the default key's), with `changes`."""
        limits = {f.name: getattr(self, f.name) for f in fields(KeyFlowSettings)}
        return KeyFlowSettings(**{**limits, **changes})


@dataclass(frozen=True, kw_only=True)
class FlowSettings(KeyFlowSettings):
    """The fleet-wide flow control (in Redis): leases, pause, circuit, budgets, lanes; the
    per-key limits it inherits are the default key's."""

    lease_s: int
    pause_poll_s: float
    canary_interval_s: float
    circuit_threshold: int
    circuit_open_s: float
    budget_total_usd: float | None
    budget_daily_usd: float | None
    budget_batch_usd: float | None
    bulk_floor: float


@dataclass(frozen=True, kw_only=True)
class JobsSettings:
    """A job and its data path: destination, output, attempts, timeouts, concurrency, size caps."""

    dest_template: str
    output_format: OutputFormat
    output_quality: int
    max_attempts: int
    backoff_base_s: float
    backoff_max_s: float
    job_timeout_s: int
    run_lease_s: int
    max_jobs: int
    bulk_max_jobs: int | None
    max_input_bytes: int
    max_source_bytes: int
    convert_inputs: bool
    reencode_oversize: bool
    max_result_bytes: int
    ledger_retention_s: int
    # completion reports: `UPSCALE_REPORT_URI`, else this prefix in the batch's first
    # destination bucket (the recursion guard ignores it in every bucket)
    report_uri: str | None
    REPORT_PREFIX: ClassVar[str] = ".upscale-reports/"

    def report_root(self, dest_bucket: str) -> str:
        """Where the folders of batch reports go: `s3://bucket/prefix/`."""
        root = self.report_uri or f"s3://{dest_bucket}/{self.REPORT_PREFIX}"
        return root if root.endswith("/") else root + "/"

    def lane_max_jobs(self, lane: str) -> int:
        """Concurrent jobs per process on `lane` (bulk: `bulk_max_jobs`, else `max_jobs`)."""
        return self.max_jobs if lane == "live" else self.bulk_max_jobs or self.max_jobs


@dataclass(frozen=True, kw_only=True)
class CallbackSettings:
    """`UPSCALE_CALLBACK_*`: completion notices."""

    secret: SecretStr
    hosts: tuple[str, ...]
    allow_http: bool
    max_tries: int
    backoff_s: float


@dataclass(frozen=True, kw_only=True)
class ProducerSettings:
    """What only producers read: the HTTP token, event decoding, the recursion guard."""

    api_token: SecretStr
    eventbridge_keys_encoded: bool
    guard_prefixes: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class OpsSettings:
    """Logs, the worker's HTTP port, readiness."""

    log_format: Literal["auto", "json", "console"]
    log_level: str
    metrics_port: int | None
    health_bucket: str | None
