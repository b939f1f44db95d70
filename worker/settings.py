"""All configuration, from the environment (prefix `UPSCALE_`; `REDIS_URL` also accepted).

`Settings` parses the environment (and `.env`) in one flat model, so a bad value is reported by
its variable; components take its sections (`settings.redis`, `.s3`, `.upstream`, `.flow`,
`.jobs`, `.callbacks`, `.producers`, `.ops`): small frozen models holding only their fields.
Nothing here is read at import: `get_settings()` parses on first call.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from functools import lru_cache
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.contract import DEFAULT_DEST_TEMPLATE
from worker.formats import OutputFormat, check_setting

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Route = Literal["gateway", "ideogram"]
ImageMode = Literal["url", "data_url", "edits"]
ResponseFormat = Literal["url", "b64_json"]
_S = TypeVar("_S", bound="DataclassInstance")  # a section
UpstreamName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]


class UpstreamSpec(BaseModel):
    """One key of the pool (`UPSCALE_UPSTREAMS`); what it leaves out comes from the flat
    settings (UPSCALE_ROUTE, UPSCALE_GATEWAY_URL / UPSCALE_IDEOGRAM_URL, UPSCALE_RATE_RPM, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: UpstreamName = Field(description="Shown in status, logs and metrics (never the key).")
    route: Route | None = None
    url: str | None = Field(
        default=None, description="Base URL (the route's URL setting if unset)."
    )
    api_key_env: str = Field(
        default="UPSCALE_API_KEY", description="The environment variable that holds this key."
    )
    rpm: Annotated[int, Field(ge=1)] | Literal["auto"] | None = None
    max_inflight: int | None = Field(default=None, ge=1)
    price_usd: float | None = Field(default=None, ge=0)
    budget_usd: float | None = Field(
        default=None, ge=0, description="This key's own cap on spend (billed or possibly billed)."
    )


class Settings(BaseSettings):
    # `.env` in the working directory is read too (the environment wins). List settings are
    # JSON, decoded by `_json_value` so a plain value gets a message saying so.
    model_config = SettingsConfigDict(
        env_prefix="UPSCALE_",
        extra="ignore",
        env_file=".env",
        env_file_encoding="utf-8",
        enable_decoding=False,
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

    @field_validator("*", mode="before")
    @classmethod
    def _json_value(cls, v: Any, info: ValidationInfo) -> Any:
        """List (and dict) settings come from the environment as JSON: say so when they are not."""
        if not isinstance(v, str) or not info.field_name:
            return v
        if info.field_name == "upstreams" and not v.lstrip().startswith("["):
            return v  # a file name: `_upstreams_file`
        kinds = {get_origin(a) or a for a in _flat(cls.model_fields[info.field_name].annotation)}
        if not kinds & {list, dict, set, tuple}:
            return v
        try:
            return json.loads(v)
        except ValueError:
            if dict in kinds:
                raise ValueError('expected a JSON object, e.g. {"name": "value"}') from None
            example = json.dumps([x.strip() for x in v.split(",") if x.strip()] or ["..."])
            raise ValueError(f"expected a JSON list, e.g. '{example}'") from None

    @field_validator("upstreams", mode="before")
    @classmethod
    def _upstreams_file(cls, v: Any) -> Any:
        """`UPSCALE_UPSTREAMS` may name a JSON file (e.g. a mounted ConfigMap) instead."""
        if isinstance(v, str) and v.strip() and not v.lstrip().startswith("["):
            try:
                with open(v.strip(), encoding="utf-8") as f:
                    return json.load(f)
            except OSError as e:
                raise ValueError(
                    f"expected a JSON list or a readable file ({e.strerror})"
                ) from None
            except ValueError as e:
                raise ValueError(f"the file {v.strip()} is not JSON ({e})") from None
        return v

    @field_validator("upstreams")
    @classmethod
    def _upstream_names(cls, v: list[UpstreamSpec]) -> list[UpstreamSpec]:
        names = [u.name for u in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"upstream names must be unique: {', '.join(dup)} appears twice")
        for u in v:
            if u.url is not None:
                _http_url(u.url)
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        if urlsplit(v).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                "expected redis://[:password@]host:port/db (rediss:// for TLS, unix:// for a socket)"
            )
        return v

    @field_validator("gateway_url")
    @classmethod
    def _gateway_url(cls, v: str) -> str:
        # The gateway's base URL: "…/v1" (how the OpenAI SDK spells it) is accepted as well.
        v = _http_url(v).rstrip("/")
        return v.removesuffix("/v1") if v.endswith("/v1") else v

    @field_validator("ideogram_url", "s3_endpoint_url")
    @classmethod
    def _urls(cls, v: str | None) -> str | None:
        return None if v is None else _http_url(v)

    @field_validator("output_format", mode="before")
    @classmethod
    def _output_format_spelling(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip().lower()
            return "jpeg" if v == "jpg" else v
        return v

    @field_validator("output_format")
    @classmethod
    def _output_format_writable(cls, v: OutputFormat) -> OutputFormat:
        check_setting(v)
        return v

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, v: str) -> str:
        if v.upper() not in _LEVELS:
            raise ValueError(f"expected one of {', '.join(_LEVELS)}")
        return v.upper()

    # --- the sections: what each component takes ---------------------------------------
    @property
    def redis(self) -> RedisSettings:
        return _section(RedisSettings, self, "redis_")

    @property
    def s3(self) -> S3Settings:
        return _section(S3Settings, self, "s3_")

    @property
    def upstream(self) -> UpstreamSettings:
        """The upstream of the flat settings (pool member `default`, or what entries of
        `UPSCALE_UPSTREAMS` leave out)."""
        return _section(UpstreamSettings, self)

    @property
    def flow(self) -> FlowSettings:
        cap = self.max_inflight or default_inflight_cap(self.route)
        return _section(FlowSettings, self, inflight_cap=cap)

    @property
    def jobs(self) -> JobsSettings:
        return _section(JobsSettings, self)

    @property
    def callbacks(self) -> CallbackSettings:
        return _section(CallbackSettings, self, "callback_")

    @property
    def producers(self) -> ProducerSettings:
        return _section(ProducerSettings, self)

    @property
    def ops(self) -> OpsSettings:
        return _section(OpsSettings, self)

    def secrets(self) -> list[str]:
        """Every secret value set (never to be logged)."""
        values = (self.api_key, self.callback_secret, self.api_token, self.s3_secret_access_key)
        return [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _flat(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (Union, UnionType):
        return get_args(annotation)
    return (annotation,)


def _http_url(v: str) -> str:
    v = v.strip()
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an http:// or https:// URL")
    return v


# --- the sections -------------------------------------------------------------------------
# Built from the flat `Settings` (the parser of the environment, where a bad value is reported
# by its variable); each component takes only its own. Field names are the flat names, less a
# prefix the section already says (`redis_url` -> `redis.url`, `callback_hosts` ->
# `callbacks.hosts`, `s3_region` -> `s3.region`).


def default_inflight_cap(route: Route) -> int:
    """Ideogram organisations may have 10 images in progress; the gateway is limited per minute."""
    return 10 if route == "ideogram" else 64


@dataclass(frozen=True, kw_only=True)
class RedisSettings:
    """`REDIS_URL`, `UPSCALE_REDIS_SENTINELS`, `UPSCALE_REDIS_SENTINEL_MASTER`."""

    url: str
    sentinels: tuple[str, ...]
    sentinel_master: str


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


def _section(cls: type[_S], flat: Settings, prefix: str = "", **derived: Any) -> _S:
    """Section `cls` from the flat settings: each field from the flat field `prefix` + its
    name, else its name (`redis.url` <- `redis_url`, `s3.presign_ttl_s` <- `presign_ttl_s`),
    or from `derived`; lists become tuples (sections are frozen)."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in derived:
            values[f.name] = derived[f.name]
            continue
        name = prefix + f.name if prefix + f.name in Settings.model_fields else f.name
        value = getattr(flat, name)
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def env_var(name: str) -> str:
    """The environment variable that sets a setting, from its field (or alias) name:
    `rate_rpm` -> `UPSCALE_RATE_RPM`, `redis_url` -> `REDIS_URL` (or the alias actually set)."""
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        names = (
            [c for c in alias.choices if isinstance(c, str)]
            if isinstance(alias, AliasChoices)
            else [alias]
            if isinstance(alias, str)
            else []
        )
        if name == field or name in names:
            names = names or [f"{Settings.model_config.get('env_prefix', '')}{field}".upper()]
            return next((n for n in names if n in os.environ), names[0])
    return name


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
